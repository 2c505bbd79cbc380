"""The one place that sets how numba compiles voxstats' kernels.

fastmath takes every flag except ``nnan`` and ``ninf`` so that NaN and
infinity keep their meaning (the policy stumpy follows). Set the environment
variable ``NUMBA_DISABLE_JIT=1`` to run the kernels as plain Python.

Compiled kernels are cached on disk (next to the sources, or in
``$NUMBA_CACHE_DIR``, or in the user's cache folder). Where none of these is
writable (a read-only install with a read-only ``$HOME``, usual in containers
and on HPC clusters) numba would refuse to even define a cached kernel; then
the kernels are compiled without a cache (a few seconds at first use in each
process) and nothing fails.
"""

import contextlib
import logging

import numba

logger = logging.getLogger(__name__)


def _cache_available():
    """True if numba can cache a kernel defined in this package's folder.

    numba looks for a writable cache folder when a function is decorated with
    ``cache=True`` (not when it is compiled), and raises RuntimeError ("no
    locator available") when there is none.
    """
    def probe():  # pragma: no cover - never called, only decorated
        return 0

    try:
        numba.njit(cache=True)(probe)
    except RuntimeError as exc:
        logger.info("numba cannot cache compiled kernels here (%s); compiling them without a cache. "
                    "Set NUMBA_CACHE_DIR to a writable folder to keep them between runs.", exc)
        return False
    return True


CACHE = _cache_available()
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
JIT = {"cache": CACHE, "fastmath": FASTMATH}
# Kernels whose summation order must not depend on the compiler's reassociation.
JIT_STRICT = {"cache": CACHE}

njit = numba.njit
prange = numba.prange


@contextlib.contextmanager
def n_threads(n_jobs):
    """Run numba with ``n_jobs`` threads and BLAS with one, restoring both after.

    BLAS runs single-threaded because the engine splits its matrix products
    itself (in fixed blocks, for reproducibility) over its own threads.
    """
    from threadpoolctl import threadpool_limits

    n = _check_n_jobs(n_jobs)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(n)
        with threadpool_limits(limits=1, user_api="blas"):
            yield n
    finally:
        numba.set_num_threads(previous)


def _check_n_jobs(n_jobs):
    maximum = numba.config.NUMBA_NUM_THREADS
    if n_jobs is None:
        return 1
    if not isinstance(n_jobs, (int,)) or isinstance(n_jobs, bool):
        raise TypeError(f"n_jobs must be an integer, got {n_jobs!r}")
    given = n_jobs
    if n_jobs < 0:
        n_jobs = maximum + 1 + n_jobs
    if n_jobs < 1:
        raise ValueError(f"Invalid value for the 'n_jobs' parameter: got {given}, expected >= 1, or -1 for all "
                         f"{maximum} threads (-2 all but one, down to -{maximum})")
    return min(n_jobs, maximum)


def _make_prefetch():
    """``prefetch(array, flat_index)``: ask the CPU to fetch an element into cache.

    A no-op in plain Python (``NUMBA_DISABLE_JIT=1``); in compiled code it emits
    LLVM's prefetch intrinsic (read, high locality). It changes no result.
    """
    if numba.config.DISABLE_JIT:
        def prefetch(array, index):
            return None
        return prefetch

    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, array, index):
        def codegen(context, builder, signature, args):
            array_type = signature.args[0]
            ary = context.make_array(array_type)(context, builder, args[0])
            data = builder.bitcast(ary.data, ir.IntType(8).as_pointer())
            itemsize = context.get_constant(types.intp, context.get_abi_sizeof(
                context.get_data_type(array_type.dtype)))
            offset = builder.mul(builder.sext(args[1], itemsize.type) if args[1].type != itemsize.type
                                 else args[1], itemsize)
            ptr = builder.gep(data, [offset])
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return types.void(array, index), codegen

    return prefetch


prefetch = _make_prefetch()
