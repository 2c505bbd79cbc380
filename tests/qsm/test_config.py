"""Tests of qsm.config: the shipped config, and clear errors before long work."""

import pandas as pd
import pytest

from qsm.config import (
    check_participants,
    config_to_toml,
    demo_config_path,
    load_config,
    read_participants,
    save_config,
)


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
    with pytest.raises(FileNotFoundError, match="sub-RRMS0.nii.gz of sub-RRMS0 listed in"):
        check_participants(c, read_participants(c))


@pytest.mark.parametrize("groups, message", [
    ({"../../escape": "HC"}, r"\[groups\] patient group '../../escape' is used in file names"),
    ({"RR/MS": "HC"}, r"patient group 'RR/MS' is used in file names and must be letters"),
    ({"RRMS": "HC RRMS"}, r"control group of RRMS 'HC RRMS'"),
    ({"RRMS": ".."}, r"control group of RRMS '..'"),
    ({"RRMS": "HC_"}, r"control group of RRMS 'HC_'"),
    ({"A": "HC", "B": "HC"}, r"each patient group needs its own control group; \['HC'\]"),
])
def test_group_labels_must_be_safe_in_file_names(groups, message):
    with pytest.raises(ValueError, match=message) as exc:
        load_config({"groups": groups})
    assert "\n" not in str(exc.value)


def test_labels_and_formulas_from_a_toml_file(tmp_path):
    p = tmp_path / "study.toml"
    p.write_text('[groups]\nRRMS = "HC_RRMS"\n[regression]\n'
                 'group_formula = "chi ~ patient + I(__import__(\'os\').system(\'touch x\'))"\n')
    (tmp_path / "a.nii").write_bytes(b"")
    (tmp_path / "a.tsv").write_bytes(b"")
    with pytest.raises(ValueError, match=r"study.toml: \[regression\] group_formula: .*may "
                                         r"contain only .*got the call I\(\.\.\.\)"):
        load_config(p)
    for raw, message in [
        ({"study": {"space": "../x"}}, r"\[study\] space '../x'"),
        ({"atlas": {"labels_img": "a.nii", "label_table": "a.tsv", "space": "MNI/x"}},
         r"\[atlas\] space 'MNI/x'"),
        ({"regression": {"clinical": ["../edss"]}}, r"clinical variable '../edss'"),
        ({"regression": {"clinical_formula": "chi ~ {variable} + np.exp(age)"}},
         r"clinical_formula: .*got '\.'"),
        ({"regression": {"group_term": "age2"}}, r"group_term 'age2' is not a column of"),
        ({"regression": {"group_formula": "y ~ patient"}}, r"must have the response 'chi'"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_config({"groups": {"A": "B"}, **raw}, base_dir=tmp_path)
    assert not (tmp_path / "x").exists()


def _write(folder, rows):
    pd.DataFrame(rows).to_csv(folder / "participants.tsv", sep="\t", index=False, na_rep="n/a")


@pytest.mark.parametrize("change, message", [
    (lambda r: r[0].update(chi_path=None), r"chi_path is n/a for sub-RRMS0; every analysed"),
    (lambda r: r[1].update(age="4O"), r"column 'age' must hold numbers, but '4O' \(sub-RRMS1\)"),
    (lambda r: r[2].update(disease_duration="long"),
     r"column 'disease_duration' must hold numbers, but 'long' \(sub-RRMS2\)"),
    (lambda r: [x.update(disease_duration=None) for x in r],
     r"clinical variable 'disease_duration' is n/a for every patient"),
    (lambda r: r[3].update(age=None), r"covariate 'age' is n/a for sub-HC_RRMS0"),
    (lambda r: r[4].update(participant_id=None), r"participant_id is n/a in row\(s\) 5"),
])
def test_participant_values_checked_before_work(study, change, message):
    folder, raw = study
    rows = pd.read_csv(folder / "participants.tsv", sep="\t", na_values="n/a",
                       keep_default_na=False).to_dict("records")
    change(rows)
    _write(folder, rows)
    c = load_config(raw, base_dir=folder)
    with pytest.raises(ValueError, match=message) as exc:
        check_participants(c, read_participants(c))
    assert "\n" not in str(exc.value) and "participants.tsv" in str(exc.value)


def test_text_covariate_stays_categorical_and_numbers_become_numbers(study):
    folder, raw = study
    c = load_config(raw, base_dir=folder)
    rows = check_participants(c, read_participants(c))
    assert rows.sex.tolist() == ["F"] * 6 and rows.age.dtype.kind in "if"


def test_formula_columns_must_exist(study):
    folder, raw = study
    c = load_config({**raw, "regression": {"group_formula": "chi ~ patient + age + site",
                                           "clinical": ["disease_duration"]}}, base_dir=folder)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['site'\]"):
        check_participants(c, read_participants(c))


def test_native_participant_ids_are_bids_labels(study):
    folder, raw = study
    rows = pd.read_csv(folder / "participants.tsv", sep="\t").to_dict("records")
    for r in rows:
        r["structural_path"] = r["chi_path"]
    rows[0]["participant_id"] = "sub-../../x"
    _write(folder, rows)
    c = load_config({**raw, "study": {"space": "native"}}, base_dir=folder)
    with pytest.raises(ValueError, match=r"participant label '../../x' is used in file names"):
        check_participants(c, read_participants(c))


def test_config_written_as_toml_reads_back_identical(tmp_path):
    c = load_config({"groups": {"RRMS": "HC_RRMS", "SPMS": "HC_SPMS"},
                     "study": {"name": 'A "quoted"\tname \\ é'},
                     "voxelwise": {"n_perm": 123, "covariates": []},
                     "normalization": {"dipy_params": {"syn_level_iters": [3, 2, 1]}},
                     "regression": {"clinical": []}}, base_dir=tmp_path)
    path = save_config(c, tmp_path / "study.toml", header="written by a test\nsecond line")
    text = path.read_text()
    assert text.startswith("# written by a test\n# second line\n")
    again = load_config(path)
    assert again.to_dict() == c.to_dict() and again.base_dir == tmp_path
    assert config_to_toml(again) == config_to_toml(c)
