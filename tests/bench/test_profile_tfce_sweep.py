"""bench/profile_tfce_sweep.py: its edge count against loops, and a tiny run (not timed)."""

import importlib
import json
import sys
from pathlib import Path

import numpy as np

from voxstats.graph import grid_graph

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _module():
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("profile_tfce_sweep")
    finally:
        sys.path.remove(str(BENCH))


def test_same_sign_edges_equals_a_count_over_the_grid():
    rng = np.random.default_rng(0)
    mask = rng.random((6, 7, 5)) < 0.8
    values = np.where(rng.random(mask.shape) < 0.2, 0.0, rng.normal(size=mask.shape))
    expected = 0
    for p in np.argwhere(mask):
        for axis in range(3):
            q = p.copy()
            q[axis] += 1
            if q[axis] < mask.shape[axis] and mask[tuple(q)]:
                a, b = values[tuple(p)], values[tuple(q)]
                expected += int(a != 0 and np.sign(a) == np.sign(b))
    graph = grid_graph(mask, 6)
    assert _module().same_sign_edges(values[mask], graph.neighbours) == expected


def test_profile_runs_and_its_scans_meet_every_edge(tmp_path, capsys):
    out = tmp_path / "profile.json"
    # main() raises if any scan order meets a different number of edges than NumPy counts
    assert _module().main(["--n", "20", "--tiny", "--maps", "2", "--rounds", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    ms = report["cpu_ms_per_map"]
    assert set(ms) == {"whole", "order", "scan (value order)", "scan (memory order)",
                       "scan (random order)", "grid scan (value order)"}
    assert all(v > 0 for v in ms.values())
    assert "rest: union-find" in capsys.readouterr().out
