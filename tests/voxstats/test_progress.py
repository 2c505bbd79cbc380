"""voxstats.progress: tqdm on a terminal, a few plain lines when stderr is a log."""

import ast
import io
import re
import sys
from pathlib import Path

import pytest

from voxstats.progress import progress_bar

ROOT = Path(__file__).resolve().parents[2]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_one_plain_line_per_tenth(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    with progress_bar(total=1000, desc="pat>con (1/2)", unit="perm") as bar:
        for _ in range(1000):
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # by hand: the first step (0 %), then each tenth 10 %, 20 %, ..., 100 %
    assert [int(re.match(r"pat>con \(1/2\): +(\d+)% \(\d+/1000 perm\)", line).group(1)) for line in lines] == \
        list(range(0, 101, 10))
    assert lines[-1].startswith("pat>con (1/2): 100% (1000/1000 perm)")


def test_an_unfinished_bar_ends_with_where_it_stopped(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress_bar(total=1000, desc="normalize", unit="subject")
    bar.update(5)
    bar.update(3)
    bar.close()
    assert log.getvalue().splitlines()[-1].startswith("normalize:   1% (8/1000 subject)")
    assert len(log.getvalue().splitlines()) == 2


def test_a_terminal_gets_tqdms_bar(monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    for _ in progress_bar(range(50), desc="subjects"):
        pass
    assert "\r" in term.getvalue() and "50/50" in term.getvalue()


def test_disabled_writes_nothing(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert list(progress_bar(range(5), desc="x", disable=True)) == list(range(5))
    assert log.getvalue() == ""


@pytest.mark.parametrize("package", ["voxstats", "qsm"])
def test_every_progress_bar_goes_through_progress_bar(package):
    """Before: each module used tqdm.auto, whose bar wrote thousands of carriage returns into logs."""
    direct = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if path.name == "progress.py" and package == "voxstats":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tqdm":
                direct.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tqdm" for a in node.names):
                direct.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert direct == []
