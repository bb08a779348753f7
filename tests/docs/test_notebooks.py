"""Execute the notebooks headless (nbclient) with small settings, as CI does.

Each notebook runs in a fresh ``python3`` kernel with ``TOPO_PAI_NOTEBOOK_SMALL=1``
(narrow models, few methods and sparsities, no figures written to docs/) and
``OMP_WAIT_POLICY=PASSIVE``. A notebook passes when no cell raises and at least
one cell displays a PNG figure.
"""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed "
                               "(pip install nbclient nbformat ipykernel) to run the notebooks")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed "
                               "(pip install nbclient nbformat ipykernel) to run the notebooks")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install ipykernel) "
                    "to run the notebooks")
pytest.importorskip("matplotlib", reason="the notebooks draw with matplotlib "
                    "(pip install topo_pai[plot])")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """The kernel inherits this process's environment (jupyter_client copies os.environ)."""
    monkeypatch.setenv("TOPO_PAI_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    # inline figures (an inherited MPLBACKEND=Agg would display nothing)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # exercise the saving code, away from the committed figures in docs/figures
    monkeypatch.setenv("TOPO_PAI_FIGURE_DIR", str(tmp_path / "figures"))
    return tmp_path


def _run(name: str, timeout: int = 600):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    # "python3" is ipykernel's native kernel: jupyter_client starts it on sys.executable,
    # i.e. on the interpreter (and venv) running the tests
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def _outputs(nb, kind):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == kind]


def _pngs(nb) -> list[str]:
    return [o["data"]["image/png"] for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if "image/png" in o.get("data", {})]


def _stream(nb) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb, "stream"))


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.glob("*")} if folder.is_dir() else {}


@pytest.mark.parametrize("name", ["node_path_curves.ipynb", "train_fashion_mnist.ipynb"])
def test_notebook_runs_and_draws(name, kernel_env):
    committed = NOTEBOOKS.parent / "docs" / "figures"
    before = _mtimes(committed)
    nb = _run(name)
    assert not _outputs(nb, "error")  # nbclient raises on errors; belt and braces
    pngs = _pngs(nb)
    assert pngs, f"{name} displayed no figure"
    assert all(len(p) > 1000 for p in pngs)
    assert "small=True" in _stream(nb)
    # figures go to $TOPO_PAI_FIGURE_DIR; the committed ones are never rewritten by CI
    saved = list((kernel_env / "figures").glob("*.png"))
    assert saved and all(p.stat().st_size > 1000 for p in saved)
    assert _mtimes(committed) == before


@pytest.mark.parametrize("name", ["node_path_curves.ipynb", "train_fashion_mnist.ipynb"])
def test_stored_notebooks_have_no_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    stored = [c for c in nb.cells if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not stored, "strip the outputs before committing (figures live in docs/figures)"
