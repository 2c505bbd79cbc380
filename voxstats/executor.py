"""Where the chunks of a permutation schedule run: local threads, or a Dask cluster.

Both executors take the same chunks (fixed ranges of rearrangement indices)
and return the same :class:`voxstats.engine.ChunkResult` objects, which merge
exactly in any order, so the maps are bit-identical whatever runs them.

``local``
    One chunk after another in this process; each chunk uses ``n_jobs``
    threads (numba kernels and blocked matrix products).
``dask``
    Chunks run as tasks on a ``dask.distributed`` cluster, each task on one
    thread. The residualised data, the schedule and the observed maps are
    scattered to every worker once per contrast, not sent with each chunk.
    Without a scheduler address a ``LocalCluster`` of ``n_jobs`` worker
    processes is started (and closed at the end). Needs the ``distributed``
    extra: ``pip install "voxstats[distributed]"``.
"""

import contextlib
import logging

from . import engine
from .tfce import _check_option

logger = logging.getLogger(__name__)

__all__ = ["DaskExecutor", "LocalExecutor", "open_executor", "run_chunks"]

EXECUTORS = ("local", "dask")


class LocalExecutor:
    """Chunks one after another in this process, ``threads`` threads each."""

    name = "local"

    def __init__(self, threads=1, pool=None):
        self.threads = threads
        self.pool = pool

    def map(self, job, schedule, observed, bounds):
        """Yield the ChunkResult of each (start, stop) in ``bounds`` as it finishes."""
        for start, stop in bounds:
            yield engine.run_chunk(job, schedule, start, stop, observed, self.threads, self.pool)

    def close(self):
        pass


_worker_blas_limited = False


def _dask_chunk(job, schedule, observed, start, stop):
    """One chunk on a Dask worker thread: numba and BLAS on one thread."""
    global _worker_blas_limited
    import numba

    if not _worker_blas_limited:  # once per worker process, never restored
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
        _worker_blas_limited = True
    numba.set_num_threads(1)  # thread-local in numba
    return engine.run_chunk(job, schedule, start, stop, observed, 1, None)


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ImportError("executor='dask' needs dask.distributed, which is not installed; "
                          "install it with: pip install \"voxstats[distributed]\"") from None
    return distributed


class DaskExecutor:
    """Chunks as tasks on a ``dask.distributed`` cluster.

    Parameters
    ----------
    scheduler : str, distributed.Client or None
        Scheduler address (``tcp://host:8786``), an existing client (not
        closed here), or None to start a ``LocalCluster`` of ``n_workers``
        single-threaded worker processes.
    n_workers : int
        Workers of the LocalCluster started when ``scheduler`` is None.
    """

    name = "dask"

    def __init__(self, scheduler=None, *, n_workers=1):
        distributed = _import_distributed()
        self._cluster = None
        self._owns_client = True
        if scheduler is None:
            logger.info("Starting a Dask LocalCluster with %d worker processes", n_workers)
            self._cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                                     processes=True, dashboard_address=":0")
            self.client = distributed.Client(self._cluster)
        elif isinstance(scheduler, str):
            try:
                self.client = distributed.Client(scheduler, timeout="30s")
            except (OSError, TimeoutError) as exc:
                raise OSError(f"scheduler: cannot reach a Dask scheduler at {scheduler!r} ({exc})") from None
        elif isinstance(scheduler, distributed.Client):
            self.client, self._owns_client = scheduler, False
        else:
            raise TypeError("Invalid value for the 'scheduler' parameter: expected an address string, "
                            f"a distributed.Client or None, got {type(scheduler).__name__}")

    def map(self, job, schedule, observed, bounds):
        """Yield the ChunkResult of each (start, stop) in ``bounds`` as it finishes (any order)."""
        from distributed import as_completed

        if not bounds:
            return
        client = self.client
        # Once per worker, not per chunk: the data are the big part.
        shared = client.scatter([job, schedule, observed], broadcast=True, hash=False)
        pending = {client.submit(_dask_chunk, *shared, start, stop, pure=False) for start, stop in bounds}
        try:
            for future in as_completed(list(pending)):
                result = future.result()
                pending.discard(future)  # dropping the last reference frees the worker's copy
                del future
                yield result
        finally:
            if pending:
                client.cancel(list(pending))
            client.cancel(shared)

    def close(self):
        if self._owns_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()


@contextlib.contextmanager
def open_executor(executor="local", scheduler=None, *, threads=1, pool=None):
    """An executor for the length of a run, closed at the end.

    Parameters
    ----------
    executor : {'local', 'dask'}
    scheduler : str, distributed.Client or None
        Dask only: the scheduler's address or a client; None starts a LocalCluster.
    threads : int
        Local: threads per chunk. Dask LocalCluster: worker processes.
    pool : concurrent.futures.ThreadPoolExecutor or None
        Local: threads for the blocked matrix products.
    """
    _check_option("executor", executor, EXECUTORS)
    if executor == "local":
        if scheduler is not None:
            raise ValueError("Invalid value for the 'scheduler' parameter: a scheduler is only used "
                             "with executor='dask'")
        runner = LocalExecutor(threads, pool)
    else:
        runner = DaskExecutor(scheduler, n_workers=threads)
    try:
        yield runner
    finally:
        runner.close()


def run_chunks(runner, job, schedule, observed, bounds, *, store=None, flag=None, bar=None):
    """Every chunk of ``bounds`` for one contrast, merged; resumed and saved through ``store``.

    Parameters
    ----------
    runner : LocalExecutor or DaskExecutor
    job : voxstats.engine.ContrastJob
    schedule : voxstats.permutation.PermutationSchedule
    observed : voxstats.engine.Observed
    bounds : list of (start, stop)
        The chunks, tiling 0..schedule.n_perm - 1.
    store : checkpoint store of this contrast, optional
        Finished chunks are read from it and new ones written to it.
    flag : optional
        ``flag.check(done, total)`` is called after each chunk (raises on a signal).
    bar : tqdm, optional
        Advanced by each chunk's rearrangements (finished chunks count at once).

    Returns
    -------
    voxstats.engine.ChunkResult
        The merge of all chunks, accumulated as they arrive (counts added at
        once), so that memory does not grow with the number of chunks.
    """
    merged = engine.NullAccumulator(schedule.n_perm)
    if store is None:
        todo = list(bounds)
    else:
        todo = []
        for item in store.iter_load(bounds):
            if isinstance(item, engine.ChunkResult):
                merged.add(item)  # counted at once, then dropped: memory does not grow
                if bar is not None:
                    bar.update(item.stop - item.start)
            else:
                todo.append(item)
        if len(todo) < len(bounds):
            logger.info("Contrast %s: %d of %d chunks found in the checkpoint", job.name,
                        len(bounds) - len(todo), len(bounds))
    done = len(bounds) - len(todo)
    if flag is not None:
        flag.check(done, len(bounds))
    with contextlib.closing(runner.map(job, schedule, observed, todo)) as results:
        for chunk in results:
            if store is not None:
                store.save(chunk)
            merged.add(chunk)
            done += 1
            if bar is not None:
                bar.update(chunk.stop - chunk.start)
            del chunk  # merged: free it before the next one is computed
            if flag is not None:
                flag.check(done, len(bounds))
    return merged.result()
