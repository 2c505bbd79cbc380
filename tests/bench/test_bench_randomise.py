"""bench/bench_randomise.py runs end to end on a tiny problem (not timed)."""

import importlib
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_bench_randomise_runs_and_writes_its_figures(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        bench = importlib.import_module("bench_randomise")
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "bench.json"
    assert bench.main(["--n", "12", "--tiny", "--n-perm", "8", "16", "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ms/perm" in printed and "peak/data" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["threads"] for r in rows] == [1]
    assert rows[0]["peak_mb"] > 0 and rows[0]["data_mb"] > 0
