"""Support for older Pythons: ``tomllib`` is new in Python 3.11; 3.10 reads TOML with the
``tomli`` package (the same parser; a dependency on 3.10 only)."""

from __future__ import annotations


def toml_loads(text: str) -> dict:
    """Parse TOML ``text`` with ``tomllib``, or ``tomli`` where ``tomllib`` is missing.

    >>> toml_loads('models = ["lenet5"]')
    {'models': ['lenet5']}
    """
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                "reading a .toml file on Python < 3.11 needs the tomli package: "
                "pip install tomli (or give the configuration as .json)") from None
    return tomllib.loads(text)
