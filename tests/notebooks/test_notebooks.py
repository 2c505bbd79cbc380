"""Execute the notebooks of ``notebooks/`` in a fresh kernel, in small mode.

Each notebook is a jupytext percent-format ``.py`` file. It is converted to a
notebook, run with nbclient in a new ``python3`` kernel that uses this
interpreter, with ``VOXSTATS_NOTEBOOK_SMALL=1`` (smaller cohorts, fewer
permutations) and ``VOXSTATS_NOTEBOOK_OUT`` pointing to a temporary folder. A
cell that raises fails the test; the notebooks also ``assert`` their own claims
(planted effects found, error falling to zero, FWE rate inside the binomial
band), so a wrong claim fails too. Figures are produced by the run, never stored.
"""

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
EXPECTED = ("01_thalamus_ms_study.py", "02_tfce_on_other_maps.py", "03_engine_validation.py")
CELL_TIMEOUT_S = 600

pytestmark = [
    # jupyter_core announces its platformdirs migration; jupyter_client/zmq warn on loops
    pytest.mark.filterwarnings("ignore:Jupyter is migrating its paths:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:jupyter_core.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:nbclient.*"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning:zmq.*"),
]


def _read(path):
    jupytext = pytest.importorskip("jupytext")
    return jupytext.read(path, fmt="py:percent")


def _kernel_spec_dir(tmp_path, out_dir):
    """A ``python3`` kernelspec that runs this interpreter with the test environment."""
    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    pythonpath = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "")
                                                 .split(os.pathsep) if p])
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "voxstats notebook test",
        "language": "python",
        "env": {"PYTHONPATH": pythonpath, "VOXSTATS_NOTEBOOK_SMALL": "1",
                "VOXSTATS_NOTEBOOK_OUT": str(out_dir), "PYTHONWARNINGS": "default"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return spec_dir.parent  # the "kernels" folder


def _execute(path, tmp_path, monkeypatch):
    """Run a notebook in a kernel that nbclient starts, owns and shuts down."""
    pytest.importorskip("ipykernel")
    from nbclient import NotebookClient

    nb = _read(path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # JUPYTER_PATH comes first in the kernelspec search: our python3 wins
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_spec_dir(tmp_path, out_dir).parent))
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return nb, out_dir


def _outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.get("outputs", [])


def test_the_three_notebooks_exist_as_plain_text():
    assert tuple(p.name for p in NOTEBOOKS) == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_percent_format_with_a_small_switch(path):
    nb = _read(path)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "VOXSTATS_NOTEBOOK_SMALL" in first_code.source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name}: outputs committed"
            assert "/work/shared" not in cell.source


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_in_small_mode(path, tmp_path, monkeypatch):
    before = sorted(NOTEBOOK_DIR.iterdir())
    nb, _ = _execute(path, tmp_path, monkeypatch)
    outputs = list(_outputs(nb))
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert errors == []
    n_png = sum("image/png" in o.get("data", {}) for o in outputs)
    assert n_png >= 3, f"{path.name}: expected figures produced by the run, got {n_png}"
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "small mode" in text
    # nothing written next to the notebooks
    assert sorted(NOTEBOOK_DIR.iterdir()) == before


def test_a_failing_cell_fails_the_run(tmp_path, monkeypatch):
    """The harness itself: an error in a cell surfaces as CellExecutionError."""
    from nbclient.exceptions import CellExecutionError

    bad = tmp_path / "bad.py"
    bad.write_text("# %% [markdown]\n# # bad\n\n# %%\nimport os\n"
                   "assert os.environ['VOXSTATS_NOTEBOOK_SMALL'] == '1'\n"
                   "print('small mode')\n\n# %%\nraise ValueError('boom in a cell')\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(CellExecutionError, match="boom in a cell"):
        _execute(bad, run_dir, monkeypatch)
