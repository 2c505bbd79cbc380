"""A thread pool that uses its threads only while they make the work faster.

The engine splits its work into independent tasks (blocks of voxels for the
matrix products and the exceedance counts, groups of maps for TFCE and
clusters); each task writes its own part of the output, so running a batch of
tasks on several threads or one after another gives the same numbers bit for
bit. On a quiet machine the threads divide the time; on a busy one (other
users' processes, or a scheduler that gives each session a fixed share of the
CPUs) they may only add overhead. :class:`AdaptivePool` measures both ways per
kind of task and keeps the faster, so that more threads are never much slower
than one.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

__all__ = ["AdaptivePool"]


class AdaptivePool:
    """``map`` over a thread pool, or in the calling thread when that is faster.

    For each kind of task (the function's qualified name) the pool keeps the
    wall time per task of both ways (moving averages) and the CPU use of the
    threaded way (process CPU seconds per wall second). While the threads get
    about their share of CPUs (use >= ``busy_use``) it keeps them; otherwise it
    runs the way with the lower time, trying the other one every
    ``probe_every`` batches.

    Parameters
    ----------
    n_threads : int
        Threads of the pool (>= 2).
    busy_use : float
        CPU use of the threaded way below which the machine counts as busy.
    probe_every : int
        While busy, every this many batches of a kind run the other way.
    clock, cpu_clock : callable
        Wall and process CPU time in seconds (for tests).
    """

    def __init__(self, n_threads, *, busy_use=None, probe_every=8, clock=time.perf_counter,
                 cpu_clock=time.process_time):
        self.n_threads = int(n_threads)
        self._pool = ThreadPoolExecutor(max_workers=self.n_threads)
        self.busy_use = 0.8 * self.n_threads if busy_use is None else float(busy_use)
        self.probe_every = int(probe_every)
        self._clock, self._cpu_clock = clock, cpu_clock
        self._kinds = {}
        self._lock = threading.Lock()

    def _choose(self, kind):
        with self._lock:
            state = self._kinds.setdefault(kind, {"batches": 0, "time": {}, "use": None})
            state["batches"] += 1
            times = state["time"]
            if "threads" not in times:
                return state, "threads"
            if state["use"] is not None and state["use"] >= self.busy_use:
                return state, "threads"
            if "serial" not in times:
                return state, "serial"
            best = min(times, key=times.get)
            if state["batches"] % self.probe_every == 0:
                return state, "serial" if best == "threads" else "threads"
            return state, best

    def map(self, fn, items):
        """``[fn(item) for item in items]``, on the pool's threads or here."""
        items = list(items)
        if len(items) < 2:
            return [fn(item) for item in items]
        state, way = self._choose(getattr(fn, "__qualname__", repr(fn)))
        wall, cpu = self._clock(), self._cpu_clock()
        results = list(self._pool.map(fn, items)) if way == "threads" else [fn(item) for item in items]
        wall, cpu = self._clock() - wall, self._cpu_clock() - cpu
        with self._lock:
            per_item = wall / len(items)
            old = state["time"].get(way)
            state["time"][way] = per_item if old is None else 0.7 * old + 0.3 * per_item
            if way == "threads" and wall > 0:
                use = cpu / wall
                state["use"] = use if state["use"] is None else 0.7 * state["use"] + 0.3 * use
        return results

    def shutdown(self, wait=True):
        self._pool.shutdown(wait=wait)
