"""voxstats imports and runs where numba cannot cache (read-only install and $HOME)."""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import voxstats

CODE = """
import numpy as np
import voxstats
from voxstats import _numba
stat = np.zeros((5, 5, 5))
stat[2, 2, 2] = 3.0
print(_numba.CACHE, float(voxstats.tfce(stat)[2, 2, 2]))
"""


def _chmod(root, writable):
    for folder, _, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644 if writable else 0o444)
        os.chmod(folder, 0o755 if writable else 0o555)


def _make_read_only(folders):
    """Make ``folders`` unwritable, even for root (immutable flag); returns the undo function."""
    if os.geteuid() != 0:
        for folder in folders:
            _chmod(folder, False)
        return lambda: [_chmod(folder, True) for folder in folders]
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "-R", "+i", *map(str, folders)],
                                        capture_output=True).returncode != 0:
        subprocess.run([chattr or "true", "-R", "-i", *map(str, folders)], capture_output=True)
        pytest.skip("running as root where 'chattr +i' is not permitted: cannot make a folder read-only")
    return lambda: subprocess.run([chattr, "-R", "-i", *map(str, folders)], capture_output=True)


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_import_and_compile_without_a_writable_cache():
    """A read-only copy of the package, a read-only $HOME, no NUMBA_CACHE_DIR: no error, same values."""
    root = Path(tempfile.mkdtemp(prefix="voxstats-ro-"))
    undo = None
    try:
        site = root / "site"
        shutil.copytree(Path(voxstats.__file__).parent, site / "voxstats",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (root / "home").mkdir()
        undo = _make_read_only([site, root / "home"])
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(root / "home"), "PYTHONPATH": str(site),
               "PYTHONDONTWRITEBYTECODE": "1", "NUMBA_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", CODE], cwd=root, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        cache, value = out.stdout.split()
        assert cache == "False"
        # one voxel at height 3: the exact integral of h^2 from 0 to 3 (extent 1) is 9
        assert float(value) == pytest.approx(9.0, rel=1e-6)
        assert not list(site.rglob("*.nbi"))  # nothing was cached
    finally:
        if undo is not None:
            undo()
        shutil.rmtree(root, ignore_errors=True)


def test_cache_flag_reaches_every_kernel_setting():
    from voxstats import _numba

    assert _numba.JIT["cache"] is _numba.CACHE and _numba.JIT_STRICT["cache"] is _numba.CACHE
