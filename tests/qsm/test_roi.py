"""Tests of qsm.roi against hand computations and numpy."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from qsm.atlas import load_atlas
from qsm.roi import STAT_COLUMNS, cohort_region_stats, region_stats, write_stats_table


@pytest.fixture
def atlas():
    labels = np.zeros((4, 4, 4), np.int16)
    labels[:2] = 1
    labels[2:, :2] = 2
    table = pd.DataFrame({"index": [1, 2], "name": ["a_left", "b_right"],
                          "hemisphere": ["L", "R"]})
    return load_atlas(nib.Nifti1Image(labels, np.eye(4)), table, space="toy", structure="s")


def test_region_stats_by_hand():
    data = np.arange(8, dtype=float).reshape(2, 2, 2)
    data[0, 0, 0] = 0.0
    mask = np.ones((2, 2, 2), bool)
    t = region_stats(data, {"r": mask})
    assert list(t.columns) == list(STAT_COLUMNS)
    row = t.iloc[0]
    assert row.num_voxels == 8 and row["min"] == 0 and row["max"] == 7
    assert row["mean"] == pytest.approx(3.5) and row["median"] == pytest.approx(3.5)
    assert row["std"] == pytest.approx(np.std(np.arange(8)))
    nz = region_stats(data, {"r": mask}, ignore_zeros=True).iloc[0]
    assert nz.num_voxels == 7 and nz["min"] == 1 and nz["mean"] == pytest.approx(4.0)


def test_trimming_drops_outliers():
    rng = np.random.default_rng(0)
    data = rng.normal(0, 1, (10, 10, 10))
    data[0, 0, 0] = 1e6
    mask = np.ones(data.shape, bool)
    t = region_stats(data, {"r": mask}, trim_percentile=1).iloc[0]
    lo, hi = np.percentile(data, [1, 99])
    kept = data[(data >= lo) & (data <= hi)]
    assert t.num_voxels == kept.size
    assert t["max"] < 10 and t["mean"] == pytest.approx(kept.mean())
    with pytest.raises(ValueError, match="'trim_percentile' parameter"):
        region_stats(data, {"r": mask}, trim_percentile=60)


def test_empty_region_gives_nan():
    t = region_stats(np.zeros((2, 2, 2)), {"r": np.ones((2, 2, 2), bool)}, ignore_zeros=True)
    assert t.num_voxels[0] == 0 and np.isnan(t["mean"][0])


def test_cohort_table_with_unions_and_space_check(tmp_path, atlas):
    rng = np.random.default_rng(1)
    paths, arrays = [], []
    for k in range(3):
        arr = rng.normal(10 * k, 1, (4, 4, 4)).astype(np.float32)
        p = tmp_path / f"sub-{k:02d}_Chimap.nii.gz"
        nib.save(nib.Nifti1Image(arr, np.eye(4)), p)
        paths.append(p)
        arrays.append(arr)
    t = cohort_region_stats(paths, atlas)
    assert list(t.columns) == ["subject"] + list(STAT_COLUMNS)
    assert len(t) == 3 * 5  # 2 labels + s_left, s_right, s
    assert t.subject.iloc[0] == "sub-00"
    labels = np.asarray(atlas.labels_img.dataobj)
    row = t[(t.subject == "sub-02") & (t.roi == "s")].iloc[0]
    assert row["mean"] == pytest.approx(arrays[2][labels > 0].mean(), rel=1e-6)
    assert row.num_voxels == (labels > 0).sum()
    row = t[(t.subject == "sub-01") & (t.roi == "s_right")].iloc[0]
    assert row["median"] == pytest.approx(np.median(arrays[1][labels == 2]), rel=1e-6)
    out = write_stats_table(t, tmp_path / "cohort_qsmstats.tsv")
    back = pd.read_csv(out, sep="\t")
    assert np.allclose(back["mean"], t["mean"], rtol=1e-5)

    other = tmp_path / "sub-x_Chimap.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 4, 4), np.float32), np.eye(4)), other)
    with pytest.raises(ValueError, match="sub-x_Chimap.nii.gz.*not on the same grid"):
        cohort_region_stats([other], atlas)
    resampled = cohort_region_stats([other], atlas, resample=True)
    assert resampled.loc[resampled.roi == "s", "num_voxels"].item() == (labels > 0).sum()
    with pytest.raises(FileNotFoundError, match="nope.nii"):
        cohort_region_stats([tmp_path / "nope.nii"], atlas)
