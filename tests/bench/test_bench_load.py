"""bench/bench_load.py runs end to end on a tiny problem (not timed)."""

import importlib
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_bench_load_runs_and_writes_its_figures(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        bench = importlib.import_module("bench_load")
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "load.json"
    assert bench.main(["--n", "8", "--tiny", "--repeats", "1", "--old-volumes", "3", "--n-perm", "8",
                       "--threads", "1", "--folder", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "x nibabel" in printed and "peak/matrix" in printed
    rows = {r["what"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"nibabel single read", "voxstats, default mask", "voxstats, with -m",
                         "volume by volume (3 volumes)", "randomise -n 8"}
    assert rows["voxstats, with -m"]["runs"][0]["shape"] == rows["voxstats, default mask"]["runs"][0]["shape"]
    assert rows["voxstats, default mask"]["runs"][0]["shape"][0] == 8
