"""Tests of qsm.atlas: loading, checks, unions, space checks and the demo atlas."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from qsm.atlas import (
    DEMO_SPACE,
    atlas_labels_in_space,
    demo_thalamus_atlas,
    load_atlas,
    read_label_table,
    region_masks,
    save_atlas,
)


@pytest.fixture
def small_atlas(tmp_path):
    data = np.zeros((6, 5, 4), np.int16)
    data[:3, :2] = 1
    data[3:, :2] = 2
    data[:, 3:] = 3
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    img_path = tmp_path / "atlas.nii.gz"
    nib.save(img, img_path)
    tsv = tmp_path / "atlas.tsv"
    tsv.write_text("index\tname\themisphere\n1\tA_left\tL\n2\tA_right\tright\n3\tC\tB\n")
    return img_path, tsv


def test_load_atlas_unions_and_masks(small_atlas):
    img_path, tsv = small_atlas
    atlas = load_atlas(img_path, tsv, space="test", structure="thing", unions={"AB": [1, 2]})
    assert list(atlas.labels["hemisphere"]) == ["L", "R", "B"]
    assert atlas.unions["thing_left"] == (1,)
    assert atlas.unions["thing_right"] == (2,)
    assert atlas.unions["thing"] == (1, 2, 3)
    masks = region_masks(atlas)
    data = np.asarray(nib.load(img_path).dataobj)
    assert masks["A_left"].sum() == (data == 1).sum() == 3 * 2 * 4
    assert np.array_equal(masks["AB"], (data == 1) | (data == 2))
    assert np.array_equal(masks["thing"], data > 0)
    with pytest.raises(ValueError, match="Unknown atlas region 'nope'"):
        region_masks(atlas, regions=["nope"])


def test_atlas_without_label_table_is_an_error(small_atlas):
    img_path, _ = small_atlas
    with pytest.raises(ValueError, match="has no label table"):
        load_atlas(img_path, None, space="test")


def test_label_table_checks(tmp_path, small_atlas):
    img_path, _ = small_atlas
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tname\n1\tA\n")
    with pytest.raises(ValueError, match="lacks the column"):
        read_label_table(bad)
    bad.write_text("index\tname\themisphere\n1\tA\tup\n")
    with pytest.raises(ValueError, match="invalid hemisphere value"):
        read_label_table(bad)
    partial = pd.DataFrame({"index": [1, 2], "name": ["a", "b"], "hemisphere": ["L", "R"]})
    with pytest.raises(ValueError, match=r"label\(s\) \[3\] that are not in"):
        load_atlas(img_path, partial, space="test")
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        read_label_table(tmp_path / "missing.tsv")


def test_space_mismatch_refused_unless_resample(small_atlas):
    img_path, tsv = small_atlas
    atlas = load_atlas(img_path, tsv, space="test")
    same = nib.Nifti1Image(np.zeros((6, 5, 4, 2), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    assert np.array_equal(atlas_labels_in_space(atlas, same), np.asarray(atlas.labels_img.dataobj))
    # a 1 mm grid inside the same field of view
    fine = nib.Nifti1Image(np.zeros((10, 8, 6), np.float32), _shift(0.3))
    with pytest.raises(ValueError, match="subject.nii.*not on the same grid"):
        atlas_labels_in_space(atlas, fine, img_name="subject.nii")
    res = atlas_labels_in_space(atlas, fine, resample=True)
    assert res.shape == (10, 8, 6)
    coarse = np.asarray(atlas.labels_img.dataobj)
    # nearest neighbour: each fine voxel takes the label of the coarse voxel containing it
    ijk = (np.indices(res.shape).reshape(3, -1).T + 0.3) / 2.0
    expected = coarse[tuple(np.round(ijk).astype(int).T)].reshape(res.shape)
    assert np.array_equal(res, expected)


def _shift(d):
    m = np.eye(4)
    m[:3, 3] = d
    return m


def test_save_atlas_roundtrip(tmp_path, small_atlas):
    img_path, tsv = small_atlas
    atlas = load_atlas(img_path, tsv, space="test")
    out_img, out_tsv = save_atlas(atlas, tmp_path / "out", prefix="x")
    again = load_atlas(out_img, out_tsv, space="test")
    assert again.labels.equals(atlas.labels)
    assert np.array_equal(np.asarray(again.labels_img.dataobj), np.asarray(atlas.labels_img.dataobj))


def test_demo_atlas_geometry():
    atlas = demo_thalamus_atlas()
    assert atlas.space == DEMO_SPACE
    assert list(atlas.labels["index"]) == list(range(1, 9))
    masks = region_masks(atlas)
    img = atlas.labels_img
    # each nuclear group non-empty; left/right mirror images (symmetric template)
    for name in atlas.labels["name"]:
        assert masks[name].sum() > 30, name
    assert masks["thalamus_left"].sum() == masks["thalamus_right"].sum()
    assert np.array_equal(masks["thalamus_left"], masks["thalamus_right"][::-1])
    # plausible thalamus volume per hemisphere: 3-10 cm^3
    vox = abs(np.linalg.det(img.affine[:3, :3]))
    assert 3000 < masks["thalamus_left"].sum() * vox < 10000
    # pulvinar posterior to anterior group; medial closer to the midline than lateral
    ijk = {n: np.argwhere(m).mean(0) for n, m in masks.items()}
    world = {n: img.affine[:3, :3] @ v + img.affine[:3, 3] for n, v in ijk.items()}
    assert world["pulvinar_left"][1] < world["medial_left"][1] < world["anterior_left"][1]
    assert abs(world["medial_left"][0]) < abs(world["lateral_left"][0])
    assert world["thalamus_left"][0] < 0 < world["thalamus_right"][0]
    # whole thalamus is the union of the nuclear groups
    parts = np.zeros_like(masks["thalamus"])
    for n in ("anterior", "medial", "lateral", "pulvinar"):
        parts |= masks[n]
    assert np.array_equal(parts, masks["thalamus"])
