"""Tests of the qsm command line, called in-process through main([...])."""

import argparse
import json
import subprocess
import sys

import nibabel as nib
import pandas as pd
import pytest

import qsm
from qsm.cli import LOG_NAME, _get_parser, main

TABLES = ("cohort_qsmstats.tsv", "referencing.tsv", "regression_groups.tsv",
          "regression_clinical.tsv", "voxelwise/voxelwise_regions.tsv")


@pytest.mark.slow
def test_demo_small_and_its_study_toml_reproduces_the_tables(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--n-per-group", "4", "--n-perm", "50",
                 "--seed", "3", "-q"])  # -q after the subcommand
    assert code == 0
    captured = capsys.readouterr()
    assert "Simulated 24 subjects (seed 3)" in captured.out and "Report:" in captured.out
    # the console stays clean: no INFO lines; they are in the log file
    assert "INFO" not in captured.err and "Re-referenced" not in captured.err
    log = (out / LOG_NAME).read_text()
    assert log.count("Re-referenced") == 24 and "qsm demo --out" in log
    for name in ("report.md", "report.html", "data/participants.tsv", "data/study.toml",
                 "figures/regional_chi_by_group.pdf", "voxelwise/RRMS_vs_HC_RRMS_stat-pfwe.json"):
        assert (out / name).is_file(), name
    vt = pd.read_csv(out / "voxelwise" / "voxelwise_regions.tsv", sep="\t")
    assert set(vt.patient_group) == {"CIS", "RRMS", "SPMS"} and (vt.n_perm == 50).all()
    # the p maps say what they hold: plain p (small is significant), as voxstats cluster reads
    side = json.loads((out / "voxelwise" / "RRMS_vs_HC_RRMS_stat-pfwe.json").read_text())
    assert side["p_convention"] == "p" and side["n_perm"] == 50 and side["two_sided"] is True
    pmap = nib.load(out / "voxelwise" / "RRMS_vs_HC_RRMS_stat-pfwe.nii.gz").get_fdata()
    assert pmap.max() == 1.0 and pmap.min() == pytest.approx(
        vt[(vt.patient_group == "RRMS") & (vt.region == "thalamus")].min_p_fwe.item(), rel=1e-5)
    assert "p_convention" not in json.loads(
        (out / "voxelwise" / "RRMS_vs_HC_RRMS_stat-t.json").read_text())
    report = (out / "report.md").read_text()
    assert "planted vs found vs paper" in report and "data/study.toml" in report
    assert "simulation" in report.split("## Run time")[1]
    # the saved config reruns the study: same tables, byte for byte
    assert main(["-q", "run", str(out / "data" / "study.toml"), "--out",
                 str(tmp_path / "again")]) == 0
    for name in TABLES:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    # a demo into the non-empty folder refuses without --overwrite
    before = (out / "report.md").read_bytes()
    assert main(["-q", "demo", "--out", str(out), "--n-per-group", "4"]) == 1
    err = capsys.readouterr().err
    assert "--out" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "report.md").read_bytes() == before


@pytest.mark.slow
def test_run_without_clinical_variables_and_voxelwise(tmp_path):
    from qsm.simulate import simulate_cohort

    cohort = simulate_cohort(tmp_path / "data", n_per_group=3, rng=1, verbose=False)
    cfg = tmp_path / "study.toml"
    cfg.write_text(f'[study]\nparticipants = "{cohort.participants_path.as_posix()}"\n'
                   '[groups]\nRRMS = "HC_RRMS"\n[voxelwise]\nenabled = false\n'
                   '[regression]\nclinical = []\n')
    assert main(["-q", "run", str(cfg), "--out", str(tmp_path / "run")]) == 0
    table = pd.read_csv(tmp_path / "run" / "regression_clinical.tsv", sep="\t")
    assert len(table) == 0 and "beta" in table.columns
    report = (tmp_path / "run" / "report.md").read_text()
    assert "No clinical variable was analysed" in report
    assert not (tmp_path / "run" / "voxelwise").exists()
    assert sorted(p.name for p in (tmp_path / "run" / "figures").glob("*.png")) == [
        "atlas.png", "regional_chi_by_group.png"]


def test_common_options_before_and_after_the_subcommand():
    parser = _get_parser()
    assert parser.parse_args(["demo", "--out", "x", "-q"]).quiet is True
    assert parser.parse_args(["-q", "demo", "--out", "x"]).quiet is True
    assert parser.parse_args(["--quiet", "run", "c.toml", "--out", "x"]).quiet is True
    assert parser.parse_args(["demo", "--out", "x"]).quiet is False
    assert parser.parse_args(["normalize", "src", "out", "--quiet"]).quiet is True
    assert parser.parse_args(["normalize", "src", "out", "--n-jobs", "-1"]).n_jobs == -1
    transfer = ["atlas", "transfer", "--atlas", "thomas", "--to", "MNI152NLin2009aSym",
                "--out", "x"]
    assert parser.parse_args([*transfer, "-q"]).quiet is True
    assert parser.parse_args(["-q", *transfer]).quiet is True
    assert parser.parse_args(["atlas", "-q", *transfer[1:]]).quiet is True
    assert parser.parse_args(transfer).quiet is False


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"qsm {qsm.__version__}"


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _all_subcommands(parser, prefix=()):
    """(name, parser) of every subcommand, nested ones (``atlas transfer``) included."""
    if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        return []
    out = []
    for name, sub in _subparsers(parser).items():
        out.append((" ".join((*prefix, name)), sub))
        out += _all_subcommands(sub, (*prefix, name))
    return out


def test_every_subcommand_has_a_description_and_every_option_its_default():
    parser = _get_parser()
    subs = dict(_all_subcommands(parser))
    assert {"run", "demo", "normalize", "atlas", "atlas transfer"} <= set(subs)
    for name, sub in subs.items():
        assert sub.description and len(sub.description) > 40, name
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if not action.option_strings or action.dest == "help" or action.required:
                continue
            assert action.help, (name, action.option_strings)
            helptext = sub._get_formatter()._expand_help(action)
            assert "default" in helptext, (name, action.option_strings, helptext)
        assert "(default: 2)" in text if name == "normalize" else True
    normalize = " ".join(subs["normalize"].format_help().split())
    assert "--outlier-z Z" in normalize and "(default: 3.5)" in normalize
    transfer = " ".join(subs["atlas transfer"].format_help().split())
    assert "working grid of the registration in mm (default: 2.0)" in transfer


@pytest.mark.parametrize("argv, message", [
    (["demo", "--out", "x", "--n-perm", "0"], "argument --n-perm: must be >= 1, got 0"),
    (["demo", "--out", "x", "--n-per-group", "0"], "argument --n-per-group: must be >= 1, got 0"),
    (["run", "c.toml", "--out", "x", "--n-perm", "-5"], "argument --n-perm: must be >= 1"),
    (["normalize", "s", "o", "--n-jobs", "0"], "argument --n-jobs: must be >= 1 or -1"),
    (["normalize", "s", "o", "--hybrid-mu", "-1"], "argument --hybrid-mu: must be >= 0.0"),
    (["normalize", "s", "o", "--qc-floor", "2"], "argument --qc-floor: must be in [0.0, 1.0]"),
    (["normalize", "s", "o", "--resolution", "0"], "argument --resolution: must be > 0"),
    (["demo"], "the following arguments are required: --out"),
    (["atlas", "transfer", "--atlas", "thomas", "--to", "x", "--out", "o",
      "--to-resolution", "0"], "argument --to-resolution: must be > 0"),
])
def test_usage_errors_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_arguments_checked_before_simulating(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-per-group", "2"]) == 2  # a usage error, as --n-per-group 0
    err = capsys.readouterr().err
    assert err.startswith("qsm demo: error: --n-per-group must be >= 3") and err.count("\n") == 1
    assert not out.exists()  # nothing simulated, not even the folder
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["demo", "--out", str(afile)]) == 1
    assert "--out" in capsys.readouterr().err and afile.read_text() == "x"


def test_run_reports_config_errors(tmp_path, capsys):
    cfg = tmp_path / "study.toml"
    cfg.write_text('[groups]\nRRMS = "HC_RRMS"\n[voxelwise]\nn_prem = 3\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "qsm run: error:" in err and "unknown key(s) ['n_prem'] in [voxelwise]" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_python_dash_m_qsm(tmp_path):
    done = subprocess.run([sys.executable, "-m", "qsm", "demo", "--out", str(tmp_path),
                           "--n-per-group", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == ("qsm demo: error: --n-per-group must be >= 3 (the study's "
                           "regressions need at least 3 subjects per group), got 1.\n")


def test_exit_codes_agree_with_voxstats(tmp_path, capsys):
    """A flag's bad value is a usage error (2) whether argparse or qsm finds it; bad data is 1;
    both commands document the same codes in --help."""
    import voxstats.cli

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path / "a"), "--n-perm", "0"])   # argparse
    assert exc.value.code == 2
    assert main(["demo", "--out", str(tmp_path / "a"), "--n-per-group", "2"]) == 2   # qsm's check
    assert main(["normalize", str(tmp_path), str(tmp_path / "o"), "--reference", "mask"]) == 2
    assert main(["run", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o")]) == 1
    assert voxstats.cli.main(["randomise", "-i", "x.nii.gz", "-o", str(tmp_path / "x"), "-1",
                              "-n=-5"]) == 2
    assert voxstats.cli.main(["randomise", "-i", str(tmp_path / "x.nii.gz"), "-o",
                              str(tmp_path / "x"), "-1"]) == 1   # file not found: data
    capsys.readouterr()
    texts = []
    for entry, prog in ((main, "qsm"), (voxstats.cli.main, "voxstats")):
        with pytest.raises(SystemExit):
            entry(["--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        texts.append(help_text.split("Exit codes: ", 1)[1].split(" Same as")[0])
    assert texts[0] == texts[1]
    assert texts[0].startswith("0 success; 1 bad input data or a failed run; 2 a usage error")
