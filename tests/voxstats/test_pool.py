"""voxstats._pool.AdaptivePool: same results either way; threads kept only while they help."""

import threading

import numpy as np
import pytest

from voxstats._pool import AdaptivePool


def test_map_gives_the_serial_results_in_order():
    pool = AdaptivePool(3)
    try:
        for _ in range(20):
            assert pool.map(lambda x: x * x, range(50)) == [x * x for x in range(50)]
        assert pool.map(str, []) == [] and pool.map(str, [7]) == ["7"]
    finally:
        pool.shutdown()


class _Machine:
    """A fake clock: each task costs ``serial`` wall seconds alone and ``threaded`` on a worker."""

    def __init__(self, serial, threaded, cpu):
        self.serial, self.threaded, self.cpu_per_task = serial, threaded, cpu
        self.wall = self.cpu = 0.0
        self.lock = threading.Lock()
        self.ways = []

    def task(self, _):
        on_worker = threading.current_thread() is not threading.main_thread()
        with self.lock:
            self.wall += self.threaded if on_worker else self.serial
            self.cpu += self.cpu_per_task
            self.on_worker = self.on_worker or on_worker

    def batch(self, pool, fn):
        self.on_worker = False
        pool.map(fn, range(4))
        self.ways.append("threads" if self.on_worker else "serial")

    def run(self, pool, n_batches):
        for _ in range(n_batches):
            self.batch(pool, self.task)
        return self.ways


@pytest.mark.parametrize("probe_every", [4, 8])
def test_busy_machine_runs_serially_but_for_probes(probe_every):
    # a busy machine: two threads get no more CPU than one (use 0.2) and add overhead
    machine = _Machine(serial=1.0, threaded=1.2, cpu=0.25)
    pool = AdaptivePool(2, probe_every=probe_every, clock=lambda: machine.wall, cpu_clock=lambda: machine.cpu)
    try:
        ways = machine.run(pool, 40)
    finally:
        pool.shutdown()
    assert ways[0] == "threads" and ways[1] == "serial"  # one try each way
    threaded = np.flatnonzero(np.array(ways[2:]) == "threads") + 3  # batch numbers (1-based)
    assert len(threaded) <= 40 // probe_every
    assert np.all(threaded % probe_every == 0)  # only the probes


def test_quiet_machine_keeps_the_threads():
    # two threads halve the wall time and use two CPUs: never a serial batch
    machine = _Machine(serial=1.0, threaded=0.5, cpu=1.0)
    pool = AdaptivePool(2, clock=lambda: machine.wall, cpu_clock=lambda: machine.cpu)
    try:
        assert machine.run(pool, 30) == ["threads"] * 30
    finally:
        pool.shutdown()


def test_kinds_are_measured_apart():
    machine = _Machine(serial=1.0, threaded=2.0, cpu=0.1)
    pool = AdaptivePool(2, probe_every=1000, clock=lambda: machine.wall, cpu_clock=lambda: machine.cpu)

    def other(_):
        machine.task(_)

    try:
        machine.run(pool, 5)
        assert machine.ways[-1] == "serial"
        machine.ways.clear()
        for _ in range(2):  # a new kind of task starts with a try on the threads
            machine.batch(pool, other)
        assert machine.ways == ["threads", "serial"]
    finally:
        pool.shutdown()
