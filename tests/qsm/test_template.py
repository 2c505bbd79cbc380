"""Tests for qsm.template: the bundled template's space name and the output grid."""

import numpy as np
import pytest

from qsm.atlas import DEMO_SPACE
from qsm.template import MNI_SPACE, load_template, output_grid


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
