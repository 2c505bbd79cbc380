"""Tests of qsm.config: the shipped config, and clear errors before long work."""

import pandas as pd
import pytest

from qsm.config import check_participants, demo_config_path, load_config, read_participants


def test_shipped_demo_config_loads():
    c = load_config()
    assert c.source == str(demo_config_path())
    assert dict(c.groups) == {"CIS": "HC_CIS", "RRMS": "HC_RRMS", "SPMS": "HC_SPMS"}
    assert c.voxelwise.covariates == ("age", "sex") and c.voxelwise.tfce
    assert c.simulation.n_per_group == 40
    assert c.to_dict()["regression"]["clinical"] == ("disease_duration", "edss")


def test_overrides_and_relative_paths(tmp_path):
    c = load_config(overrides={"voxelwise": {"n_perm": 10}}, base_dir=tmp_path)
    assert c.voxelwise.n_perm == 10 and c.voxelwise.tfce
    assert c.path("participants.tsv") == tmp_path / "participants.tsv"


@pytest.mark.parametrize("raw, message", [
    ({"groups": {"A": "B"}, "bogus": {}}, r"unknown section\(s\) \['bogus'\]"),
    ({"groups": {"A": "B"}, "voxelwise": {"n_prem": 5}}, r"unknown key\(s\) \['n_prem'\] in "
                                                         r"\[voxelwise\]"),
    ({"groups": {"A": "B"}, "voxelwise": {"n_perm": "many"}}, r"\[voxelwise\] n_perm must be "
                                                              "an integer"),
    ({"groups": {"A": "B"}, "atlas": {"labels_img": "x.nii.gz", "space": "MNI"}},
     "atlas x.nii.gz has no label table"),
    ({"groups": {}}, r"\[groups\] must map each patient group"),
    ({"groups": {"A": "B"}, "voxelwise": {"connectivity": 5}}, r"\[voxelwise\] connectivity"),
    ({"groups": {"A": "B"}, "referencing": {"region": "csf"}}, r"\[referencing\] region"),
    ({"groups": {"A": "B"}, "regression": {"clinical_formula": "chi ~ age"}}, r"\{variable\}"),
])
def test_bad_configs(raw, message):
    with pytest.raises(ValueError, match=message):
        load_config(raw)


def test_bad_toml_file(tmp_path):
    p = tmp_path / "study.toml"
    p.write_text("[study\nname = 1")
    with pytest.raises(ValueError, match="study.toml is not valid TOML"):
        load_config(p)
    with pytest.raises(FileNotFoundError, match="nothere.toml"):
        load_config(tmp_path / "nothere.toml")


@pytest.fixture
def study(tmp_path):
    rows = []
    for g in ("RRMS", "HC_RRMS"):
        for i in range(3):
            sid = f"sub-{g}{i}"
            (tmp_path / f"{sid}.nii.gz").write_bytes(b"")
            rows.append(dict(participant_id=sid, group=g, age=40 + i, sex="F",
                             disease_duration=3.0 if g == "RRMS" else None,
                             chi_path=f"{sid}.nii.gz"))
    pd.DataFrame(rows).to_csv(tmp_path / "participants.tsv", sep="\t", index=False,
                              na_rep="n/a")
    raw = {"groups": {"RRMS": "HC_RRMS"}, "regression": {"clinical": ["disease_duration"]}}
    return tmp_path, raw


def test_participant_checks(study):
    folder, raw = study
    c = load_config(raw, base_dir=folder)
    rows = check_participants(c, read_participants(c))
    assert len(rows) == 6 and rows.disease_duration.isna().sum() == 3
    c = load_config({**raw, "study": {"min_subjects_per_group": 4}}, base_dir=folder)
    with pytest.raises(ValueError, match=r"too few subjects in group\(s\) \{'RRMS': 3, "
                                         r"'HC_RRMS': 3\}"):
        check_participants(c, read_participants(c))
    c = load_config({**raw, "regression": {"clinical": ["edss"]}}, base_dir=folder)
    with pytest.raises(ValueError, match=r"participants.tsv lacks the column\(s\) \['edss'\]"):
        check_participants(c, read_participants(c))
    (folder / "sub-RRMS0.nii.gz").unlink()
    c = load_config(raw, base_dir=folder)
    with pytest.raises(FileNotFoundError, match="sub-RRMS0.nii.gz listed in"):
        check_participants(c, read_participants(c))
