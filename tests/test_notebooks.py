"""The notebooks are part of the product: each executes top to bottom in a fresh kernel (a failing cell
fails CI), and each is committed with its outputs cleared and small."""
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ has no .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_cleared_and_small(path):
    import nbformat
    nb = nbformat.read(path, as_version=4)
    assert path.stat().st_size <= 1_000_000
    assert nb.cells and nb.cells[0].cell_type == "markdown", "a notebook opens with what it teaches"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks cleared"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path):
    import nbclient
    import nbformat
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()                              # raises CellExecutionError naming the failing cell
