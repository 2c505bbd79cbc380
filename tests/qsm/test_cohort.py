"""Tests for qsm.cohort: BIDS and table discovery, and each validation error."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from qsm.cohort import Cohort, CohortError, load_cohort

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _write(path, data=None, affine=AFFINE, shape=(6, 7, 5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32) if data is None else data
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _bids(root, subjects=("01", "02", "03"), sessions=(None,)):
    for sub in subjects:
        for ses in sessions:
            folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
            prefix = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
            _write(folder / f"{prefix}_Chimap.nii.gz")
            _write(folder / f"{prefix}_T1w.nii.gz")
            _write(folder / f"{prefix}_space-MNI152NLin2009aSym_Chimap.nii.gz")  # ignored
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects],
                  "group": ["CIS", "RRMS", "control"][: len(subjects)],
                  "age": [30.5, 41.0, 28.0][: len(subjects)]}).to_csv(
        root / "participants.tsv", sep="\t", index=False)
    return root


def test_bids_folder_with_sessions_and_clinical_columns(tmp_path):
    root = _bids(tmp_path / "derivatives" / "qsmxt", sessions=("1", "2"))
    cohort = load_cohort(root)
    assert isinstance(cohort, Cohort) and len(cohort) == 6
    assert list(cohort.table.columns[:4]) == ["subject", "session", "chi_path", "structural_path"]
    assert cohort.subjects[:2] == ["sub-01_ses-1", "sub-01_ses-2"]
    row = next(iter(cohort))
    assert row["chi_path"].name == "sub-01_ses-1_Chimap.nii.gz"
    assert row["structural_path"].name == "sub-01_ses-1_T1w.nii.gz"
    assert row["group"] == "CIS" and row["age"] == 30.5
    assert "chi_path" not in cohort.clinical.columns and "age" in cohort.clinical.columns


def test_bids_uncompressed_qsmxt_names(tmp_path):
    """QSMxT writes uncompressed ``_Chimap.nii`` next to a ``_MEGRE.nii`` magnitude."""
    anat = tmp_path / "sub-08" / "anat"
    _write(anat / "sub-08_Chimap.nii")
    _write(anat / "sub-08_MEGRE.nii")
    cohort = load_cohort(tmp_path)
    assert cohort.table.loc[0, "chi_path"].name == "sub-08_Chimap.nii"
    assert cohort.table.loc[0, "structural_path"].name == "sub-08_MEGRE.nii"
    (anat / "sub-08_MEGRE.nii").unlink()
    alone = load_cohort(tmp_path, require_structural=False)   # for --drive chi
    assert alone.table.loc[0, "structural_path"] is None


def test_bids_magnitude_fallback_and_choice(tmp_path):
    anat = tmp_path / "sub-07" / "anat"
    _write(anat / "sub-07_Chimap.nii.gz")
    _write(anat / "sub-07_magnitude.nii.gz")
    cohort = load_cohort(tmp_path)
    assert cohort.table.loc[0, "structural_path"].name == "sub-07_magnitude.nii.gz"
    assert cohort.table.loc[0, "session"] is None
    with pytest.raises(CohortError, match=r"Subject 'sub-07': no structural image .*sub-07_Chimap"):
        load_cohort(tmp_path, structural="T1w")
    with pytest.raises(ValueError, match="'structural' parameter.*but got 'T2w'"):
        load_cohort(tmp_path, structural="T2w")


def test_simulate_style_table_with_relative_paths(tmp_path):
    """The table qsm.simulate writes: paths relative to the TSV's folder."""
    for sub in ("sub-001", "sub-002"):
        _write(tmp_path / sub / "anat" / f"{sub}_space-native_Chimap.nii.gz")
        _write(tmp_path / sub / "anat" / f"{sub}_T1w.nii.gz")
    pd.DataFrame({
        "participant_id": ["sub-001", "sub-002"], "group": ["RRMS", "control"],
        "age": [33, 35], "sex": ["F", "M"], "disease_duration": [4.5, np.nan],
        "edss": [2.0, np.nan],
        "chi_path": [f"{s}/anat/{s}_space-native_Chimap.nii.gz" for s in ("sub-001", "sub-002")],
        "structural_path": [f"{s}/anat/{s}_T1w.nii.gz" for s in ("sub-001", "sub-002")],
    }).to_csv(tmp_path / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    cohort = load_cohort(tmp_path / "participants.tsv")
    assert cohort.subjects == ["sub-001", "sub-002"]
    assert cohort.table["subject"].tolist() == ["001", "002"]  # leading zeros kept
    assert all(p.is_absolute() or p.exists() for p in cohort.table["chi_path"])
    assert cohort.table.loc[0, "chi_path"] == tmp_path / "sub-001/anat/sub-001_space-native_Chimap.nii.gz"
    assert np.isnan(cohort.table.loc[1, "disease_duration"])
    assert list(cohort.clinical.columns) == ["subject", "session", "group", "age", "sex",
                                             "disease_duration", "edss"]
    # and as CSV
    df = pd.read_csv(tmp_path / "participants.tsv", sep="\t", dtype={"participant_id": str})
    df.to_csv(tmp_path / "participants.csv", index=False)
    assert load_cohort(tmp_path / "participants.csv").subjects == ["sub-001", "sub-002"]


def _table(tmp_path, rows):
    df = pd.DataFrame(rows, columns=["participant_id", "chi_path", "structural_path", "age"])
    path = tmp_path / "participants.tsv"
    df.to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture
def good(tmp_path):
    return {s: (_write(tmp_path / f"{s}_chi.nii.gz"), _write(tmp_path / f"{s}_t1.nii.gz"))
            for s in ("sub-01", "sub-02")}


def test_missing_chi_file(tmp_path, good):
    path = _table(tmp_path, [["sub-01", *good["sub-01"], 30],
                             ["sub-02", tmp_path / "gone.nii.gz", good["sub-02"][1], 31]])
    with pytest.raises(CohortError, match=r"^Subject 'sub-02': χ map file '.*gone.nii.gz' does not exist.$"):
        load_cohort(path)


def test_missing_structural_file(tmp_path, good):
    path = _table(tmp_path, [["sub-01", good["sub-01"][0], tmp_path / "t1_gone.nii.gz", 30]])
    with pytest.raises(CohortError, match=r"Subject 'sub-01': structural image file '.*t1_gone"):
        load_cohort(path)


def test_duplicate_subjects(tmp_path, good):
    path = _table(tmp_path, [["sub-01", *good["sub-01"], 30], ["01", *good["sub-02"], 31]])
    with pytest.raises(CohortError, match=r"Subject 'sub-01' appears 2 times in '.*participants.tsv'"):
        load_cohort(path)


def test_not_in_same_space(tmp_path, good):
    shifted = _write(tmp_path / "shifted.nii.gz", affine=AFFINE + np.diag([0, 0, 0, 0.0]) +
                     np.pad(np.ones((3, 1)), ((0, 1), (3, 0))))
    other_shape = _write(tmp_path / "small.nii.gz", shape=(6, 7, 4))
    path = _table(tmp_path, [["sub-01", good["sub-01"][0], shifted, 30]])
    with pytest.raises(CohortError, match=r"Subject 'sub-01': χ map .* and structural image "
                                          r"'.*shifted.nii.gz' .* not in the same space \(affines"):
        load_cohort(path)
    path = _table(tmp_path, [["sub-01", good["sub-01"][0], other_shape, 30]])
    with pytest.raises(CohortError, match=r"not in the same space \(shapes differ\)"):
        load_cohort(path)


def test_non_finite_values(tmp_path, good):
    data = np.zeros((6, 7, 5), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    bad = _write(tmp_path / "nan_chi.nii.gz", data=data)
    path = _table(tmp_path, [["sub-01", bad, good["sub-01"][1], 30]])
    with pytest.raises(CohortError, match=r"Subject 'sub-01': χ map '.*nan_chi.nii.gz' contains 2 non-finite"):
        load_cohort(path)


def test_not_3d_and_unreadable(tmp_path, good):
    four_d = _write(tmp_path / "echoes.nii.gz", shape=(6, 7, 5, 3))
    path = _table(tmp_path, [["sub-01", four_d, good["sub-01"][1], 30]])
    with pytest.raises(CohortError, match=r"'.*echoes.nii.gz' must be a 3D image"):
        load_cohort(path)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not nifti")
    path = _table(tmp_path, [["sub-01", junk, good["sub-01"][1], 30]])
    with pytest.raises(CohortError, match=r"Subject 'sub-01': χ map '.*junk.nii.gz' is not a readable"):
        load_cohort(path)


def test_missing_column_and_source(tmp_path):
    path = tmp_path / "p.tsv"
    pd.DataFrame({"participant_id": ["sub-01"], "chi": ["x"]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(CohortError, match=r"p.tsv' has no 'chi_path' column; columns are participant_id, chi"):
        load_cohort(path)
    with pytest.raises(FileNotFoundError, match="Cohort source '.*nowhere' does not exist"):
        load_cohort(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CohortError, match=r"No 'sub-\*/\[ses-\*/\]anat/\*_Chimap.nii\[.gz\]' file"):
        load_cohort(tmp_path / "empty")


def test_skip_bad_warns_and_lists(tmp_path, good):
    path = _table(tmp_path, [["sub-01", *good["sub-01"], 30],
                             ["sub-02", tmp_path / "gone.nii.gz", good["sub-02"][1], 31],
                             ["sub-03", good["sub-02"][0], tmp_path / "t1_gone.nii.gz", 32]])
    with pytest.warns(UserWarning, match=r"Skipped 2 subject\(s\).*sub-02.*sub-03"):
        cohort = load_cohort(path, skip_bad=True)
    assert cohort.subjects == ["sub-01"]
    assert [s.subject for s in cohort.skipped] == ["02", "03"]
    assert "does not exist" in cohort.skipped[0].reason
    with pytest.warns(UserWarning), pytest.raises(CohortError, match="No valid subject"):
        load_cohort(_table(tmp_path, [["sub-02", tmp_path / "gone.nii.gz", "x", 1]]), skip_bad=True)


def test_structural_optional(tmp_path, good):
    path = tmp_path / "p.tsv"
    pd.DataFrame({"participant_id": ["sub-01"], "chi_path": [good["sub-01"][0].name]}).to_csv(
        path, sep="\t", index=False)
    with pytest.raises(CohortError, match="no 'structural_path' column"):
        load_cohort(path)
    cohort = load_cohort(path, require_structural=False)
    assert cohort.table.loc[0, "structural_path"] is None
    assert Path(cohort.table.loc[0, "chi_path"]).exists()


@pytest.mark.parametrize("label", ["sub-../../x", "sub-a/b", "sub-01_x", "sub-"])
def test_subject_labels_must_be_bids_labels(tmp_path, good, label):
    path = _table(tmp_path, [[label, *good["sub-01"], 30]])
    with pytest.raises(CohortError, match=r"is used in file names and must be letters and "
                                          r"digits only \(a BIDS label\)"):
        load_cohort(path)
