"""Tests for voxstats.cluster_table against scipy.ndimage references."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from voxstats.cluster_table import COLUMNS, cluster_table, read_atlas_labels
from voxstats.design_files import DesignFileError

AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2.5, -72], [0, 0, 0, 1]])


def _img(data, affine=AFFINE):
    return nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)


@pytest.fixture
def stat():
    data = np.zeros((12, 10, 8), dtype=np.float32)
    data[1:4, 1:4, 1:3] = 3.0  # 18 voxels
    data[2, 2, 1] = 5.0  # its peak
    data[8:10, 6:8, 5] = 4.0  # 4 voxels, tied peak values
    data[6, 1, 6] = 2.5  # single voxel
    data[7, 2, 7] = 2.6  # touches (6,1,6) only by a corner (26-connectivity)
    data[9:11, 1:3, 1:4] = -6.0  # negative, 12 voxels
    data[0, 9, 7] = np.nan
    return data


def _reference(data, mask, structure):
    labels, n = ndimage.label(mask, structure=structure)
    idx = range(1, n + 1)
    sizes = ndimage.sum_labels(mask, labels, idx)
    # break ties towards the first voxel in C order, as cluster_table documents
    tie_break = 1e-9 * np.arange(data.size).reshape(data.shape)
    peaks = ndimage.maximum_position(np.where(mask, data, -np.inf) - tie_break, labels, idx)
    cogs = ndimage.center_of_mass(np.abs(np.where(mask, data, 0)), labels, idx)
    # largest first, then by peak height
    return sorted(zip(sizes, peaks, cogs), key=lambda t: (-t[0], -data[t[1]]))


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_matches_scipy_ndimage(stat, connectivity):
    res = cluster_table(_img(stat), threshold=2.0, connectivity=connectivity)
    table = res.table
    assert tuple(table.columns) == COLUMNS
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    mask = np.nan_to_num(stat) > 2.0
    ref = _reference(stat, mask, structure)
    assert len(table) == len(ref)
    np.testing.assert_array_equal(table["n_voxels"], [r[0] for r in ref])
    np.testing.assert_array_equal(table[["peak_i", "peak_j", "peak_k"]].to_numpy(), [r[1] for r in ref])
    np.testing.assert_allclose(table[["cog_i", "cog_j", "cog_k"]].to_numpy(), [r[2] for r in ref])
    np.testing.assert_allclose(table["volume_mm3"], table["n_voxels"] * 10.0)
    peaks = table[["peak_i", "peak_j", "peak_k"]].to_numpy()
    np.testing.assert_allclose(table[["peak_x", "peak_y", "peak_z"]], peaks @ AFFINE[:3, :3].T + AFFINE[:3, 3])
    np.testing.assert_array_equal(table["max_value"], stat[tuple(peaks.T)])
    # the label image numbers clusters in table order
    labels = np.asarray(res.labels_img.dataobj)
    np.testing.assert_array_equal(np.bincount(labels.ravel())[1:], table["n_voxels"])
    assert set(np.unique(labels)) == {0, *table["cluster"]}
    assert np.allclose(res.labels_img.affine, AFFINE)
    # corner-touching voxels merge only with 26-connectivity
    assert (len(table) == 3) == (connectivity == 26)


def test_first_peak_on_ties_and_exact_values(stat):
    table = cluster_table(_img(stat), threshold=2.0).table
    row = table.iloc[0]
    assert (row.n_voxels, row.max_value, row.peak_i, row.peak_j, row.peak_k) == (18, 5.0, 2, 2, 1)
    # tied cluster of four 4.0 voxels: peak is the first in C order
    tied = table[table.n_voxels == 4].iloc[0]
    assert (tied.peak_i, tied.peak_j, tied.peak_k) == (8, 6, 5)
    np.testing.assert_allclose([tied.cog_i, tied.cog_j, tied.cog_k], [8.5, 6.5, 5.0])


def test_sign_and_min_size(stat):
    neg = cluster_table(_img(stat), threshold=2.0, sign="neg").table
    assert list(neg.n_voxels) == [12] and neg.max_value[0] == -6.0
    both = cluster_table(_img(stat), threshold=2.0, sign="both", min_size=4).table
    assert list(both.n_voxels) == [18, 12, 4]
    assert list(both.cluster) == [1, 2, 3]


def test_p_map_conventions(stat):
    p = np.ones(stat.shape)
    p[1:4, 1:4, 1] = 0.01  # half of the big cluster significant
    p[8:10, 6:8, 5] = 0.2
    for convention, stored in [("p", p), ("1-p", 1 - p), ("logp", -np.log10(p))]:
        table = cluster_table(_img(stat), p_img=_img(stored), p_convention=convention).table
        assert list(table.n_voxels) == [9]
        assert table.p_min[0] == pytest.approx(0.01, rel=1e-5)
    # both threshold and p map: intersection
    table = cluster_table(_img(stat), p_img=_img(p), p_convention="p", alpha=0.5, threshold=3.5).table
    assert list(table.n_voxels) == [4, 1]
    empty = cluster_table(_img(stat), threshold=100.0).table
    assert empty.empty and tuple(empty.columns) == COLUMNS


def test_atlas_labels_and_tsv(tmp_path, stat):
    atlas = np.zeros(stat.shape)
    atlas[:5] = 3
    atlas[8:, 6:, :] = 7
    lut = tmp_path / "lut.tsv"
    lut.write_text("index\tname\n0\tbackground\n3\tLeft thalamus\n")
    nib.save(_img(atlas), tmp_path / "atlas.nii.gz")
    res = cluster_table(_img(stat), threshold=2.0, sign="both",
                        atlas_img=tmp_path / "atlas.nii.gz", atlas_labels=lut)
    assert list(res.table.peak_label) == ["Left thalamus", "background", "label 7", "background"]
    out = tmp_path / "clusters.tsv"
    res.to_tsv(out)
    back = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert list(back.columns) == list(COLUMNS)
    np.testing.assert_allclose(back.cog_x, res.table.cog_x, rtol=1e-5)
    assert list(back.peak_label) == list(res.table.peak_label)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas.nii.gz", "clusters.tsv", "lut.tsv"]


def test_errors(tmp_path, stat):
    img = _img(stat)
    with pytest.raises(ValueError, match="Either 'threshold' or 'p_img' must be given"):
        cluster_table(img)
    with pytest.raises(ValueError, match="Allowed values are 6, 18, 26, but got 8 instead"):
        cluster_table(img, threshold=1, connectivity=8)
    with pytest.raises(ValueError, match="'sign' parameter. Allowed values are 'pos', 'neg', 'both'"):
        cluster_table(img, threshold=1, sign="+")
    with pytest.raises(ValueError, match="'p_convention' parameter"):
        cluster_table(img, p_img=img, p_convention="-log10p")
    with pytest.raises(ValueError, match="stat_img and p_img are not in the same space"):
        cluster_table(img, p_img=_img(stat, np.eye(4)))
    with pytest.raises(ValueError, match="stat_img and atlas_img are not in the same space"):
        cluster_table(img, threshold=1, atlas_img=_img(stat[:5]))
    with pytest.raises(ValueError, match="stat_img: expected a 3D image, got shape"):
        cluster_table(_img(np.zeros((3, 3, 3, 2))), threshold=1)
    with pytest.raises(FileNotFoundError, match="p_img: file not found: .*nope.nii"):
        cluster_table(img, p_img=tmp_path / "nope.nii")
    with pytest.raises(ValueError, match="'min_size' parameter"):
        cluster_table(img, threshold=1, min_size=0)
    with pytest.raises(ValueError, match="'alpha' parameter"):
        cluster_table(img, p_img=img, alpha=0)
    with pytest.raises(ValueError, match="'threshold' parameter"):
        cluster_table(img, threshold=-1)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("idx\tname\n1\ta\n", r"lut\.tsv, line 1: expected columns 'index' and 'name'"),
        ("index\tname\nx\ta\n", r"lut\.tsv, line 2: expected an integer index, got 'x'"),
        ("index\tname\n1\ta\n1\tb\n", r"lut\.tsv, line 3: expected unique indices, got 1 again"),
        ("index\tname\n1\n", r"lut\.tsv, line 2: expected 2 fields"),
    ],
)
def test_bad_lut(tmp_path, content, pattern):
    path = tmp_path / "lut.tsv"
    path.write_text(content)
    with pytest.raises(DesignFileError, match=pattern):
        read_atlas_labels(path)


def test_lut_any_column_order(tmp_path):
    path = tmp_path / "lut.tsv"
    path.write_text("name\tcolor\tINDEX\nPul\t#ff0000\t12\nMD\t#00ff00\t-1\n")
    assert read_atlas_labels(path) == {12: "Pul", -1: "MD"}
