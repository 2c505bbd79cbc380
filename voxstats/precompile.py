"""Compile the permutation engine's kernels ahead of their first use, in another process.

numba compiles a kernel at its first call (about 4 s of CPU for the kernels
of a TFCE permutation test) and caches it on disk. A command that will run the
engine later (``qsm demo`` simulates a cohort first) calls
:func:`compile_in_background` at its start: a child process runs two tiny TFCE
permutation tests (float32 and float64 projections), which compiles the
kernels and writes them to the cache on another core while the parent works;
the parent later loads them from the cache. Nothing is started when numba
cannot cache (the child's work would be lost) or when the kernels are already
cached. If the parent needs a kernel before the child has cached it, numba
compiles it in the parent as it would have anyway; numba writes its cache
files atomically, so the two processes never see half-written files.

Run ``python -m voxstats.precompile`` to fill the cache by hand (e.g. in a
container image, after ``pip install``).
"""

import atexit
import logging
import os
import subprocess
import sys

logger = logging.getLogger(__name__)

_CHILD = None  # the running child, kept so that it is waited for at exit


def _dispatchers():
    from . import _engine_numba, _tfce_numba

    return [_tfce_numba.tfce_rows, _engine_numba.stats_from_projection, _engine_numba.exceedances]


def is_cached():
    """True when every engine kernel has a fresh entry in numba's on-disk cache."""
    from . import _numba

    if not _numba.CACHE:
        return False
    try:
        # numba's own index reader: {} when the file is missing, from another
        # numba version, or older than the source
        return all(d._cache._cache_file._load_index() for d in _dispatchers())
    except Exception:  # noqa: BLE001 - a private API: when in doubt, compile
        return False


def compile_in_background():
    """Start a child process that compiles and caches the engine's kernels.

    Returns
    -------
    subprocess.Popen or None
        The child, or None when nothing was started (numba cannot cache here,
        the kernels are cached already, or ``NUMBA_DISABLE_JIT`` is set).
    """
    global _CHILD
    from . import _numba

    if os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0") or not _numba.CACHE or is_cached():
        return None
    if _CHILD is not None and _CHILD.poll() is None:
        return _CHILD
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    _CHILD = subprocess.Popen(_child_command("from voxstats.precompile import _compile; _compile()"),
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    logger.debug("compiling the engine's kernels in process %d", _CHILD.pid)
    return _CHILD


def _child_command(code):
    """argv of a child Python that runs ``code`` with this very ``voxstats`` package.

    The folder holding this package goes first on the child's ``sys.path``.
    With ``python -m voxstats.precompile`` the working directory came first: run
    from a source checkout after ``pip install .`` (README's first command),
    the child imported the checkout's ``voxstats`` and filled the checkout's
    cache, and the installed package compiled every kernel itself.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r}); {code}"]


@atexit.register
def _wait_for_child():
    if _CHILD is not None:
        try:
            _CHILD.wait(timeout=120)
        except subprocess.TimeoutExpired:  # pragma: no cover - leave it to finish on its own
            pass


def _compile():
    """Two tiny TFCE permutation tests: float32 and float64 projections, two-sided."""
    import numpy as np

    from .randomise import permuted_glm

    rng = np.random.default_rng(0)
    mask = np.ones((4, 4, 4), dtype=bool)
    group = np.repeat([0.0, 1.0], 4)
    designs = (np.column_stack([np.ones(8), group, rng.normal(size=8)]),  # continuous: float32
               np.column_stack([np.ones(8), group]))  # repeated rows: float64
    for design in designs:
        contrast = np.zeros(design.shape[1])
        contrast[1] = 1.0
        permuted_glm(rng.normal(size=(8, 64)).astype(np.float32), design, contrast, mask=mask, n_perm=8,
                     tfce=True, two_sided=True, rng=0)


if __name__ == "__main__":
    _compile()
