"""Every voxstats command on every broken input: exit status 1, one line naming the file or flag, no traceback.

The corpus is built once by the ``broken_corpus`` fixture (``tests/conftest.py``); each test runs one
command with one broken file in one slot and everything else valid, and collects every case that
misbehaves, so that a failure lists them all.
"""

import re

import nibabel as nib
import pytest

import voxstats
from voxstats.cli import main
from voxstats.cluster_table import cluster_table
from voxstats.loading import load


def _cli_problem(argv, case, capsys, flags):
    """None if ``main(argv)`` failed as it should, else what went wrong."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse usage errors exit 2 with usage text
        return f"SystemExit {stop.code}"
    except BaseException as exc:  # noqa: BLE001 - any escaping exception is the failure being tested
        return f"raised {type(exc).__name__}: {exc}"
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    if code != 1:
        return f"exit status {code} ({lines[-1:] or captured.out[:200]!r})"
    if "Traceback" in captured.err:
        return "a traceback"
    if len(lines) != 1:
        return f"{len(lines)} lines: {lines}"
    line = lines[0]
    if not line.startswith(f"voxstats {argv[0]}: error: "):
        return f"unexpected line {line!r}"
    if not any(name in line for name in case.names + tuple(flags)):
        return f"names neither {case.names} nor {flags}: {line!r}"
    for param in ("imgs", "mask_img", "stat_img", "p_img", "atlas_img", "atlas_labels", "p_convention"):
        if re.search(rf"(^|\W){param}(\W|$)", line.split("error: ", 1)[1]):
            return f"names the Python parameter {param!r}: {line!r}"
    return None


def _run_all(cases, make_argv, capsys, flags):
    assert cases, "no case in the corpus for this slot"
    problems = {}
    for case in cases:
        problem = _cli_problem(make_argv(case), case, capsys, flags)
        if problem is not None:
            problems[case.name] = problem
    assert not problems, "\n".join(f"{k} ({v})" for k, v in problems.items())


@pytest.fixture
def corpus(broken_corpus, monkeypatch):
    monkeypatch.chdir(broken_corpus.root)  # where the 'only in the working directory' entry is
    return broken_corpus


def _randomise(corpus, tmp_path, **slots):
    study = corpus.study
    case = next((v.name for v in slots.values() if hasattr(v, "name")), "good")
    argv = ["randomise", "-i", slots.get("i", study["4d"]), "-o", tmp_path / case / "r",
            "-d", slots.get("d", study["design"]), "-t", slots.get("t", study["tcon"]), "-n", "10", "--quiet"]
    for flag in ("m", "f", "e"):
        if flag in slots:
            argv += [f"-{flag}", slots[flag]]
    return argv


def test_randomise_input_4d(corpus, tmp_path, capsys):
    _run_all(corpus.cases("img4d"), lambda c: _randomise(corpus, tmp_path, i=c.path), capsys, ["-i"])


def test_randomise_input_list(corpus, tmp_path, capsys):
    _run_all(corpus.cases("list"), lambda c: _randomise(corpus, tmp_path, i=c.path), capsys, ["-i"])


def test_randomise_mask(corpus, tmp_path, capsys):
    _run_all(corpus.cases("img3d", "grid3d", "mask"), lambda c: _randomise(corpus, tmp_path, m=c.path),
             capsys, ["-m"])


def test_randomise_nan_inside_the_mask(corpus, tmp_path, capsys):
    _run_all(corpus.cases("data_in_mask"),
             lambda c: _randomise(corpus, tmp_path, i=c.path, m=corpus.study["mask"]), capsys, ["-i"])


@pytest.mark.parametrize("slot, flag", [("design", "d"), ("tcon", "t"), ("fcon", "f"), ("blocks", "e")])
def test_randomise_design_files(corpus, tmp_path, capsys, slot, flag):
    _run_all(corpus.cases(slot), lambda c: _randomise(corpus, tmp_path, **{flag: c.path}), capsys, [f"-{flag}"])


def test_tfce_input(corpus, tmp_path, capsys):
    _run_all(corpus.cases("img3d"), lambda c: ["tfce", c.path, tmp_path / "t.nii.gz"], capsys, ["IN"])


def test_tfce_mask(corpus, tmp_path, capsys):
    _run_all(corpus.cases("img3d", "grid3d", "mask"),
             lambda c: ["tfce", corpus.study["stat"], tmp_path / "t.nii.gz", "--mask", c.path], capsys, ["--mask"])


def test_cluster_stat(corpus, capsys):
    _run_all(corpus.cases("img3d"), lambda c: ["cluster", c.path, "--threshold", "1"], capsys, ["STAT"])


def test_cluster_p_map(corpus, capsys):
    _run_all(corpus.cases("img3d", "grid3d", "pmap"),
             lambda c: ["cluster", corpus.study["stat"], "--p", c.path], capsys, ["--p", "--p-convention"])


def test_cluster_atlas(corpus, capsys):
    study = corpus.study
    _run_all(corpus.cases("img3d", "grid3d", "atlas"),
             lambda c: ["cluster", study["stat"], "--threshold", "1", "--atlas", c.path], capsys, ["--atlas"])
    _run_all(corpus.cases("lut"), lambda c: ["cluster", study["stat"], "--threshold", "1", "--atlas",
                                             study["atlas"], "--atlas-labels", c.path], capsys, ["--atlas-labels"])


# --------------------------------------------------------------------------- the Python API


def _api_problem(call, case, params):
    try:
        call()
    except (ValueError, OSError, TypeError) as exc:
        text = str(exc)
        if "\n" in text:
            return f"{len(text.splitlines())} lines: {text!r}"
        if not any(name in text for name in case.names + tuple(params)):
            return f"names neither {case.names} nor {params}: {text!r}"
        return None
    except BaseException as exc:  # noqa: BLE001
        return f"raised {type(exc).__name__}: {exc}"
    return "accepted"


def _api_all(cases, call, params):
    assert cases
    problems = {c.name: p for c in cases if (p := _api_problem(lambda: call(c), c, params)) is not None}
    assert not problems, "\n".join(f"{k} ({v})" for k, v in problems.items())


def test_api_randomise_images(corpus):
    design = corpus.study["design_array"]
    _api_all(corpus.cases("img4d", "list"),
             lambda c: voxstats.randomise(str(c.path), design, [1, -1], n_perm=10), ["imgs"])
    subjects = [str(p) for p in corpus.study["subjects"]]
    _api_all(corpus.cases("img3d", "grid3d"),
             lambda c: voxstats.randomise(subjects[:-1] + [str(c.path)], design, [1, -1], n_perm=10), ["imgs"])


def test_api_randomise_mask(corpus):
    design = corpus.study["design_array"]
    _api_all(corpus.cases("img3d", "grid3d", "mask"),
             lambda c: voxstats.randomise(str(corpus.study["4d"]), design, [1, -1], mask_img=c.path, n_perm=10),
             ["mask_img"])
    _api_all(corpus.cases("data_in_mask"),
             lambda c: load(c.path, corpus.study["mask"]), ["imgs"])


def test_api_cluster_table(corpus):
    stat = corpus.study["stat"]
    _api_all(corpus.cases("img3d"), lambda c: cluster_table(c.path, threshold=1.0), ["stat_img"])
    _api_all(corpus.cases("img3d", "grid3d", "pmap"), lambda c: cluster_table(stat, p_img=c.path),
             ["p_img", "p_convention"])
    _api_all(corpus.cases("img3d", "grid3d", "atlas"),
             lambda c: cluster_table(stat, threshold=1.0, atlas_img=c.path), ["atlas_img"])


def test_api_tfce_image(corpus):
    readable = [c for c in corpus.cases("img3d") if c.path.is_file() and c.why != "2D"]  # tfce takes 2D maps
    problems = {}
    for case in readable:
        try:
            img = nib.load(case.path)
        except Exception:  # noqa: BLE001 - unreadable: nothing to hand to tfce
            continue
        problem = _api_problem(lambda: voxstats.tfce(img), case, ["stat"])
        if problem is not None:
            problems[case.name] = problem
    assert not problems, problems


def test_the_corpus_is_broad(broken_corpus):
    """Dozens of broken files, every slot covered (the tests above assert each slot is non-empty)."""
    assert len(broken_corpus.broken) >= 60
    slots = set().union(*(b.slots for b in broken_corpus.broken.values()))
    assert slots == {"img3d", "img4d", "grid3d", "mask", "data_in_mask", "list", "design", "tcon", "fcon",
                     "blocks", "lut", "pmap", "atlas"}


def test_a_list_with_a_byte_order_mark_is_read(corpus, tmp_path, capsys):
    """Not broken: the BOM, a comment, blank lines and CRLF line ends (the first entry used to break)."""
    argv = _randomise(corpus, tmp_path, i=corpus.study["bom_list"])
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    data, _ = load(corpus.study["bom_list"])
    reference, _ = load(corpus.study["4d"])
    assert (data == reference).all()
