"""voxstats.compile_in_background fills numba's cache from a child process (no timing asserted)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FILL = """
from voxstats import precompile
before = precompile.is_cached()
child = precompile.compile_in_background()
child.wait()
print(before, child.returncode, precompile.is_cached(), precompile.compile_in_background() is None)
"""

# a TFCE permutation test as `qsm demo` runs it; counts what numba had to compile
USE = """
import numba
import numpy as np
from numba.core import event
import voxstats

compiled = []

class Listener(event.Listener):
    def on_start(self, ev):
        compiled.append(ev.data["dispatcher"].py_func.__qualname__)

    def on_end(self, ev):
        pass

event.register("numba:compile", Listener())
numba.njit(lambda x: x + 1)(1)  # never cached: shows that the listener sees compilations
rng = np.random.default_rng(1)
design = np.column_stack([np.ones(10), np.repeat([0.0, 1.0], 5), rng.normal(size=10)])
result = voxstats.permuted_glm(rng.normal(size=(10, 125)).astype(np.float32), design, [0, 1, 0],
                               mask=np.ones((5, 5, 5), bool), n_perm=16, tfce=True, two_sided=True, rng=0)
print(sorted(set(compiled)))
"""


def _python(code, cache):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    env.pop("NUMBA_DISABLE_JIT", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"), reason="needs the JIT")
def test_a_background_compile_leaves_nothing_to_compile(tmp_path):
    cache = tmp_path / "numba_cache"
    cache.mkdir()
    # the child fills the cache; a second call finds it filled and starts nothing
    assert _python(FILL, cache).split() == ["False", "0", "True", "True"]
    # a new process then loads every kernel of a TFCE test from the cache
    assert _python(USE, cache) == "['<lambda>']"


def test_the_child_imports_this_voxstats_whatever_the_working_directory(tmp_path, monkeypatch):
    # a source checkout (or any folder with a voxstats/ in it) as the working directory
    shadow = tmp_path / "voxstats"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise SystemExit('imported the working directory copy')\n")
    monkeypatch.chdir(tmp_path)
    import voxstats
    from voxstats import precompile

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(precompile._child_command("import voxstats; print(voxstats.__file__)"),
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == Path(voxstats.__file__)
    # what the old command (python -m, working directory first) imported
    old = subprocess.run([sys.executable, "-c", "import voxstats"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert "working directory copy" in old.stderr
