"""Tests of qsm.read_ahead: order, errors at their item, bounded look-ahead, early stop."""

import threading
import time

import pytest

from qsm.read_ahead import read_ahead


def test_yields_every_result_in_order():
    def slow_for_small(x):  # later items finish first if run concurrently
        time.sleep(0.002 * (10 - x))
        return x * x

    assert list(read_ahead(slow_for_small, range(10), depth=3)) == [x * x for x in range(10)]
    assert list(read_ahead(str, [])) == []


def test_an_error_is_raised_at_its_item_after_the_items_before_it():
    def read(x):
        if x == 3:
            raise ValueError("file 3 is broken")
        return x

    seen = []
    with pytest.raises(ValueError, match="file 3 is broken"):
        for x in read_ahead(read, range(6)):
            seen.append(x)
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_reads_at_most_depth_items_ahead(depth):
    started = []
    consumed = []
    lock = threading.Lock()

    def read(x):
        with lock:
            started.append(x)
            ahead = len(started) - len(consumed)
        return x, ahead

    for x, ahead in read_ahead(read, range(12), depth=depth):
        time.sleep(0.003)   # a slow consumer: the reader would run far ahead if unbounded
        with lock:
            assert len(started) - len(consumed) <= depth + 1
            consumed.append(x)
        assert ahead <= depth + 1
    assert consumed == list(range(12))
    assert max(len(started) - i for i in range(12)) >= 1


def test_stopping_early_cancels_the_reads_not_started():
    started = []

    def read(x):
        started.append(x)
        time.sleep(0.01)
        return x

    gen = read_ahead(read, range(100), depth=2)
    assert next(gen) == 0
    gen.close()
    assert len(started) <= 4
    assert not any(t.name.startswith("read_ahead") for t in threading.enumerate())


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="'depth' parameter"):
        list(read_ahead(str, [1], depth=0))
