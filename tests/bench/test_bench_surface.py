"""bench/bench_surface.py runs end to end on tiny problems (not timed)."""

import importlib
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_bench_surface_runs_and_writes_its_figures(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        bench = importlib.import_module("bench_surface")
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "bench.json"
    assert bench.main(["--n", "8", "--tiny", "--n-perm", "8", "16", "--threads", "1", "--repeats", "1",
                       "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "surface / volume time per element" in printed
    rows = json.loads(out.read_text())["rows"]
    assert {r["problem"] for r in rows} == {"surface", "volume"}
    assert all(r["elements"] > 0 for r in rows)
    surface = next(r for r in rows if r["problem"] == "surface")
    assert surface["elements"] == 642  # the tiny sphere: 3 subdivisions
