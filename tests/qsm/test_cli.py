"""Tests of the qsm command line, called in-process through main([...])."""

import pandas as pd
import pytest

from qsm.cli import main


@pytest.mark.slow
def test_demo_small(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["-q", "demo", "--out", str(out), "--n-per-group", "4", "--n-perm", "50",
                 "--seed", "3"])
    assert code == 0
    text = capsys.readouterr().out
    assert "Simulated 24 subjects (seed 3)" in text and "Report:" in text
    assert (out / "report.md").is_file() and (out / "data" / "participants.tsv").is_file()
    vt = pd.read_csv(out / "voxelwise" / "voxelwise_regions.tsv", sep="\t")
    assert set(vt.patient_group) == {"CIS", "RRMS", "SPMS"} and (vt.n_perm == 50).all()
    # `qsm run` on the simulated data with a written config
    cfg = tmp_path / "study.toml"
    cfg.write_text(
        f'[study]\nparticipants = "{(out / "data" / "participants.tsv").as_posix()}"\n'
        '[groups]\nRRMS = "HC_RRMS"\n[voxelwise]\nenabled = false\n'
        '[regression]\nclinical = ["edss"]\n')
    assert main(["-q", "run", str(cfg), "--out", str(tmp_path / "run")]) == 0
    table = pd.read_csv(tmp_path / "run" / "regression_clinical.tsv", sep="\t")
    assert set(table.variable) == {"edss"}
    assert not (tmp_path / "run" / "voxelwise").exists()


def test_run_reports_config_errors(tmp_path, capsys):
    cfg = tmp_path / "study.toml"
    cfg.write_text('[groups]\nRRMS = "HC_RRMS"\n[voxelwise]\nn_prem = 3\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "qsm run: error:" in err and "unknown key(s) ['n_prem'] in [voxelwise]" in err
    assert len(err.strip().splitlines()) == 1


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo"])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err
