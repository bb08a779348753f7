"""Forcing one route of ``topo_pai.metrics.spectra.top_singular_values`` on blocks of any
size (the defaults pick the route by size), shared by the spectra tests."""

from topo_pai.metrics import spectra

#: the routes that can be forced; "default" leaves the size-based choice
ROUTES = ("default", "gram-eigh", "lanczos-dense", "lanczos-sparse")


def force_route(monkeypatch, route: str) -> str:
    """Make every block take ``route``: "gram-eigh" (dense Gram matrix + LAPACK),
    "lanczos-dense" or "lanczos-sparse" (block Lanczos on a dense or sparse operand)."""
    assert route in ROUTES, route
    if route != "default":
        monkeypatch.setattr(spectra, "DENSE_SVD_MAX_ENTRIES", 0)
        # every side takes the dense Gram matrix, or none does
        monkeypatch.setattr(spectra, "GRAM_MAX_SIDE", 1 << 30 if route == "gram-eigh" else 0)
        if route == "lanczos-dense":
            monkeypatch.setattr(spectra, "DENSE_OPERAND_MIN_DENSITY", 0.0)
        if route == "lanczos-sparse":
            monkeypatch.setattr(spectra, "DENSE_OPERAND_MAX_ENTRIES", 0)
    return route
