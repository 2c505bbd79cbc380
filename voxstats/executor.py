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
    processes is started (and closed at the end). Only a window of chunks
    (two per worker thread) is submitted at a time, the next ones as these
    finish, so that a run of millions of chunks never holds millions of tasks.
    Needs the ``distributed``
    extra: ``pip install "voxstats[distributed]"``.

Failures of the cluster end the run with :class:`ExecutorLost` (one line),
never a hang: an address that does not answer as a Dask scheduler within
:data:`TIMEOUT` seconds (a web server, the dashboard's port 8787), a scheduler
that stops answering, or no worker left, for :data:`GRACE` seconds. Chunks
finished before are kept when the run is checkpointed, so it can resume.
"""

import contextlib
import itertools
import logging
import threading
import time

from . import engine
from .errors import ParameterError
from .tfce import _check_option

logger = logging.getLogger(__name__)

__all__ = ["DaskExecutor", "ExecutorLost", "LocalExecutor", "open_executor", "run_chunks"]

EXECUTORS = ("local", "dask")
#: Seconds to reach a scheduler, and for each request to it (sending the data, collecting a chunk).
TIMEOUT = 30.0
#: Seconds a lost scheduler, or the last worker, may take to come back before the run stops.
GRACE = 30.0
_POLL = 1.0  # seconds between health checks while waiting for chunks
#: Chunks submitted to Dask ahead of their collection, per worker thread.
WINDOW_PER_THREAD = 2
_REFRESH = 5.0  # seconds between health checks (and thread counts) while chunks keep arriving


class ExecutorLost(RuntimeError):
    """The Dask cluster failed during a run (scheduler gone, no worker left, a chunk killing workers)."""


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
        self._threads, self._asked = 0, None  # worker threads, when the scheduler was last asked
        if scheduler is None:
            logger.info("Starting a Dask LocalCluster with %d worker processes", n_workers)
            self._cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                                     processes=True, dashboard_address=":0")
            self.client = distributed.Client(self._cluster)
        elif isinstance(scheduler, str):
            _check_scheduler(scheduler, TIMEOUT)
            try:
                self.client = distributed.Client(scheduler, timeout=f"{TIMEOUT}s")
            except (OSError, TimeoutError) as exc:
                raise ParameterError("scheduler", f"cannot reach a Dask scheduler at {scheduler!r} "
                                     f"({type(exc).__name__}: {exc})") from None
        elif isinstance(scheduler, distributed.Client):
            self.client, self._owns_client = scheduler, False
        else:
            raise TypeError("Invalid value for the 'scheduler' parameter: expected an address string, "
                            f"a distributed.Client or None, got {type(scheduler).__name__}")

    def map(self, job, schedule, observed, bounds):
        """Yield the ChunkResult of each (start, stop) in ``bounds`` as it finishes (any order).

        At most :meth:`window` chunks are submitted at a time; the next ones
        are submitted as these finish, so that neither this process nor the
        scheduler holds a task per chunk (``-n 2e9`` has millions of chunks).
        """
        import distributed

        if not len(bounds):
            return
        client = self.client
        # Once per worker, not per chunk: the data are the big part.
        try:
            shared = client.scatter([job, schedule, observed], broadcast=True, hash=False,
                                    timeout=TIMEOUT)
        except Exception as exc:  # no worker, or the scheduler went away
            raise ExecutorLost(f"could not send the data to the Dask workers within {TIMEOUT:.0f} s "
                               f"({_describe(exc)})") from None
        chunks = iter(bounds)
        pending = set()

        def refill():
            for start, stop in itertools.islice(chunks, max(0, self.window() - len(pending))):
                pending.add(client.submit(_dask_chunk, *shared, start, stop, pure=False))

        lost_since = None
        try:
            refill()
            while pending:
                try:
                    done, _ = distributed.wait(list(pending), timeout=_POLL, return_when="FIRST_COMPLETED")
                except (TimeoutError, distributed.TimeoutError):
                    done = ()
                except Exception as exc:
                    raise ExecutorLost(self._check() or f"the Dask cluster failed ({_describe(exc)})") \
                        from None
                for future in done:
                    try:
                        result = _result(future)
                    except ExecutorLost as exc:
                        raise ExecutorLost(self._check() or str(exc)) from None
                    pending.discard(future)  # dropping the last reference frees the worker's copy
                    del future
                    yield result
                if done:
                    lost_since = None
                if not done or time.monotonic() - self._asked > _REFRESH:
                    problem = self._check()  # also counts the workers' threads for the window
                    if problem is None:
                        lost_since = None
                    elif lost_since is None:
                        lost_since = time.monotonic()
                        logger.warning("Dask: %s; waiting up to %.0f s for it to come back", problem, GRACE)
                    elif time.monotonic() - lost_since > GRACE:
                        raise ExecutorLost(f"{problem} for {GRACE:.0f} s")
                refill()  # while the cluster is lost, the tasks wait with the client (as before a window)
        finally:
            with contextlib.suppress(Exception):
                if pending:
                    client.cancel(list(pending))
                client.cancel(shared)

    def _check(self):
        """Ask the scheduler how the cluster is (see :func:`_health`); keep its thread count."""
        problem, threads = _health(self.client)
        self._asked = time.monotonic()
        if problem is None:
            self._threads = threads
        return problem

    def window(self):
        """How many chunks may be submitted and not yet collected: twice the workers' threads.

        Each thread runs one chunk and has the next waiting, so no worker
        idles between chunks. The threads are counted by the health checks
        (while chunks keep arriving, every few seconds), so workers that join
        later widen the window; a lost cluster never blocks here.
        """
        if self._asked is None:
            self._check()
        return max(WINDOW_PER_THREAD * self._threads, WINDOW_PER_THREAD)

    def close(self):
        with contextlib.suppress(Exception):  # closing a cluster that is already gone
            if self._owns_client:
                self.client.close(timeout=TIMEOUT)
            if self._cluster is not None:
                self._cluster.close(timeout=TIMEOUT)


def _describe(exc, limit=160):
    """``Type: message`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _result(future):
    """A finished chunk's result; a failure of the cluster (not of the code) as ExecutorLost."""
    import distributed

    try:
        return future.result(timeout=TIMEOUT)
    except distributed.client.FutureCancelledError as exc:
        raise ExecutorLost(f"the Dask scheduler cancelled a chunk ({_describe(exc)})") from None
    except (OSError, TimeoutError) as exc:
        raise ExecutorLost(f"the Dask scheduler stopped answering ({_describe(exc)})") from None
    except Exception as exc:
        if type(exc).__name__ == "KilledWorker":
            raise ExecutorLost(f"a chunk killed Dask workers repeatedly (out of memory?) ({_describe(exc)})") \
                from None
        raise


def _health(client):
    """(None, worker threads) if the scheduler answers and has a worker, else (what is wrong, 0).

    The scheduler must answer within :data:`GRACE` seconds (at most
    :data:`TIMEOUT`): a scheduler killed a moment ago may leave the request
    unanswered rather than refused.
    """
    if client.status != "running":
        return f"the Dask scheduler is unreachable (client {client.status})", 0
    try:
        info = client.sync(client.scheduler.identity, n_workers=0, callback_timeout=min(TIMEOUT, GRACE))
    except Exception as exc:
        return f"the Dask scheduler stopped answering ({_describe(exc)})", 0
    if not info.get("n_workers", len(info.get("workers", ()))):
        return "no Dask worker is left", 0
    return None, int(info.get("total_threads", 1))


def _check_scheduler(address, timeout):
    """Raise ParameterError unless ``address`` answers as a Dask scheduler within ``timeout`` s.

    ``distributed.Client`` waits forever for a server that accepts the
    connection but never speaks Dask's protocol (a web server, the dashboard's
    port); this asks for the server's identity with a deadline instead.
    """
    import asyncio
    import socket

    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, location = parse_address(address)
    if scheme in ("tcp", "tls"):  # a plain TCP connection first: refused, unknown host, unreachable
        try:
            host, port = parse_host_port(location, default_port=8786)
            socket.create_connection((host, port), timeout=timeout).close()
        except (OSError, ValueError, TypeError) as exc:
            raise ParameterError("scheduler", f"cannot reach a Dask scheduler at {address} "
                                 f"({_describe(exc)})") from None

    async def identity():
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    outcome = {}

    def ask():
        try:
            outcome["reply"] = asyncio.run(asyncio.wait_for(identity(), timeout))
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=ask, name="voxstats-scheduler-check", daemon=True)
    thread.start()
    thread.join(timeout + 5.0)
    reply, error = outcome.get("reply"), outcome.get("error")
    if thread.is_alive() or isinstance(error, (TimeoutError, asyncio.TimeoutError)):
        raise ParameterError("scheduler", f"{address} did not answer as a Dask scheduler within "
                             f"{timeout:.0f} s (is it the dashboard's port, 8787? schedulers listen on "
                             "8786 by default)")
    if error is not None:
        raise ParameterError("scheduler", f"cannot reach a Dask scheduler at {address} ({_describe(error)})")
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        kind = reply.get("type") if isinstance(reply, dict) else type(reply).__name__
        raise ParameterError("scheduler", f"{address} is not a Dask scheduler (it says it is a {kind})")


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
    bounds : voxstats.engine.ChunkBounds or sequence of (start, stop)
        The chunks, tiling 0..schedule.n_perm - 1. With a store, the chunks
        still to run are passed on as a :class:`voxstats.checkpoint.ChunkRanges`.
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
        todo = bounds  # a lazy sequence: no list of millions of chunks
    else:
        def add(chunk):  # counted at once, then dropped: memory does not grow
            merged.add(chunk)
            if bar is not None:
                bar.update(chunk.stop - chunk.start)

        todo = store.resume(bounds, add)  # ranges of chunk indices, not a list of chunks
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
