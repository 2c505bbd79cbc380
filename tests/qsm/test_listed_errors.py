"""Errors about many subjects or files: a count and a few examples; the full list in qsm.log."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from qsm.cli import main
from qsm.config import check_participants, load_config, read_participants
from qsm.errors import N_EXAMPLES, ListedError, summarize
from qsm.units import check_units


def test_summarize_by_hand():
    assert summarize([]) == ""
    assert summarize(["a", "b", "c"]) == "a; b; c"
    assert summarize(list("abcdefg"), sep=", ") == "a, b, c and 4 more"
    err = ListedError("bad for 7 subject(s): ", list("abcdefg"), " (fix them).")
    assert str(err) == "bad for 7 subject(s): a; b; c and 4 more (fix them)."
    assert err.items == tuple("abcdefg") and isinstance(err, ValueError)
    assert err.full_text().splitlines() == ["bad for 7 subject(s):", *(f"  {c}" for c in "abcdefg")]


def _ppm_maps(n, rng):
    """n maps in ppb (a robust range of a few hundred ppb), e.g. a ppb cohort declared ppm."""
    return [nib.Nifti1Image(rng.normal(0, 60, (8, 8, 8)).astype(np.float32), np.eye(4))
            for _ in range(n)]


def test_check_units_message_is_short_whatever_the_cohort(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for k, img in enumerate(_ppm_maps(60, rng)):
        paths.append(tmp_path / ("a-long-folder-name" * 4) / f"sub-{k:03d}_Chimap.nii.gz")
        paths[-1].parent.mkdir(exist_ok=True)
        nib.save(img, paths[-1])
    subjects = [f"sub-{k:03d}" for k in range(60)]
    with pytest.raises(ListedError) as info:
        check_units(paths, "ppm", subjects=subjects)
    message = str(info.value)
    assert "for 60 of 60 subject(s)" in message and "and 57 more" in message
    assert message.count("Chimap.nii.gz") == N_EXAMPLES
    assert len(message) < 1000   # was ~15 KB for these 60 (~50 KB for the demo's 240)
    assert [i.split(" ")[0] for i in info.value.items] == subjects   # all of them kept
    assert all(str(p) in i for p, i in zip(paths, info.value.items))


@pytest.fixture
def table(tmp_path):
    """A participants table of 2 x 12 subjects whose χ files are empty placeholders."""
    rows = []
    for g in ("RRMS", "HC_RRMS"):
        for i in range(12):
            sid = f"sub-{g}{i:02d}"
            (tmp_path / f"{sid}.nii.gz").write_bytes(b"")
            rows.append(dict(participant_id=sid, group=g, age=40 + i, sex="FM"[i % 2],
                             chi_path=f"{sid}.nii.gz"))
    pd.DataFrame(rows).to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    raw = {"groups": {"RRMS": "HC_RRMS"},
           "voxelwise": {"covariates": ["age"]}, "regression": {"clinical": [], "group_formula": "chi ~ patient"}}
    return tmp_path, raw, pd.DataFrame(rows)


def _check(folder, raw, df):
    c = load_config(raw, base_dir=folder)
    df.to_csv(folder / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    return check_participants(c, read_participants(c))


@pytest.mark.parametrize("change, head, n", [
    ("missing_files", "the χ maps of 10 of 24 subject(s) do not exist: ", 10),
    ("no_map", "chi_path is n/a for 10 subject(s): ", 10),
    ("no_id", "participant_id is n/a in row(s) 10 rows: 1, 2, 3 and 7 more (1 = first", 10),
    ("no_covariate", "covariate 'age' is n/a for 10 subject(s): ", 10),
    ("duplicates", "participant_id values must be unique; 5 appear more than once: ", 5),
])
def test_participant_errors_count_and_keep_every_subject(table, change, head, n):
    folder, raw, df = table
    df = df.copy()
    hit = df.participant_id[:10].tolist()
    if change == "missing_files":
        for sid in hit:
            (folder / f"{sid}.nii.gz").unlink()
    elif change == "no_map":
        df.loc[:9, "chi_path"] = None
    elif change == "no_id":
        df.loc[:9, "participant_id"] = None
        hit = [str(k) for k in range(1, 11)]
    elif change == "no_covariate":
        df.loc[:9, "age"] = None
    else:
        df.loc[5:9, "participant_id"] = hit[:5]
        hit = hit[:5]
    with pytest.raises(ListedError) as info:
        _check(folder, raw, df)
    message = str(info.value)
    assert head in message and f"and {n - N_EXAMPLES} more" in message
    assert [i.split(" ")[0] for i in info.value.items] == sorted(hit) if change == "duplicates" \
        else [i.split(" ")[0] for i in info.value.items] == hit


def test_one_missing_file_keeps_its_plain_message(table):
    folder, raw, df = table
    (folder / "sub-RRMS03.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="sub-RRMS03.nii.gz of sub-RRMS03 listed in"):
        _check(folder, raw, df)


@pytest.mark.parametrize("groups, unknown", [
    ({"RRMS": "HC_RRMSX"}, "'HC_RRMSX'"),
    ({"RRSM": "HC_RRMS"}, "'RRSM'"),
])
def test_group_label_typo_is_an_unknown_group(table, groups, unknown):
    folder, raw, df = table
    df = df.assign(group=df.group.where(df.index < 20, "SPMS"))   # a third label in the table
    with pytest.raises(ValueError) as info:
        _check(folder, {**raw, "groups": groups}, df)
    message = str(info.value)
    assert f"[groups] names group(s) {unknown} that the 'group' column of" in message
    assert "participants.tsv does not hold" in message
    assert message.endswith("its groups are 'HC_RRMS', 'RRMS', 'SPMS'.")
    assert "too few" not in message


def test_cli_error_counts_and_log_lists_every_subject(table, capsys, tmp_path):
    """`qsm run` with a listing error: one short line naming qsm.log, which has them all."""
    folder, raw, df = table
    for sid in df.participant_id[:20]:
        (folder / f"{sid}.nii.gz").unlink()
    cfg = folder / "study.toml"
    cfg.write_text('[study]\nparticipants = "participants.tsv"\n[groups]\nRRMS = "HC_RRMS"\n'
                   '[regression]\nclinical = []\n[voxelwise]\ncovariates = []\n')
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 1000
    assert "the χ maps of 20 of 24 subject(s) do not exist" in err and "and 17 more" in err
    log = out / "qsm.log"
    assert err.rstrip().endswith(f"All 20 are listed in {log.resolve()}.")
    text = log.read_text()
    for sid in df.participant_id[:20]:
        assert f"  {sid} ({folder / sid}.nii.gz)" in text
    assert df.participant_id[20] not in text.split("do not exist:", 1)[1]
