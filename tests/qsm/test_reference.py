"""Tests for qsm.reference: offsets by hand, masks, errors."""

import nibabel as nib
import numpy as np
import pytest

from qsm.reference import rereference, ventricle_mask, wm_mask
from qsm.template import load_template


@pytest.fixture(scope="module")
def template():
    return load_template(resolution=2)


def _chi(template, rng=0):
    rng = np.random.default_rng(rng)
    data = (rng.standard_normal(template.shape) * 0.02 + 0.05).astype(np.float32)
    return nib.Nifti1Image(data, template.affine)


def test_whole_brain_mean_and_median(template):
    chi = _chi(template)
    brain = template.mask()
    data = chi.get_fdata(dtype=np.float32)
    res = rereference(chi, mask_img=template.mask_img)
    assert res.region == "whole_brain" and res.n_voxels == brain.sum()
    assert res.offset == pytest.approx(float(data[brain].mean()), rel=1e-6)
    out = res.img.get_fdata()
    assert abs(out[brain].mean()) < 1e-6
    np.testing.assert_array_equal(out[~brain], data[~brain])  # outside untouched
    med = rereference(chi, mask_img=template.mask_img, statistic="median")
    assert med.offset == pytest.approx(float(np.median(data[brain])), rel=1e-6)
    np.testing.assert_array_equal(chi.get_fdata(dtype=np.float32), data)  # input not modified


def test_user_mask(template):
    chi = _chi(template)
    region = np.zeros(template.shape, np.uint8)
    region[40:45, 50:55, 40:44] = 1
    data = chi.get_fdata(dtype=np.float32)
    res = rereference(chi, mask_img=template.mask_img, region="mask",
                      region_mask_img=nib.Nifti1Image(region, template.affine))
    assert res.offset == pytest.approx(float(data[region > 0].mean()), rel=1e-6)
    assert res.n_voxels == 100
    assert abs(res.img.get_fdata()[region > 0].mean()) < 1e-6


def test_wm_and_csf_regions(template):
    chi = _chi(template)
    wm = wm_mask(template.img).get_fdata() > 0
    assert 50_000 < wm.sum() < 140_000
    res = rereference(chi, mask_img=template.mask_img, region="wm")
    data = chi.get_fdata(dtype=np.float32)
    assert res.offset == pytest.approx(float(data[wm & template.mask()].mean()), rel=1e-6)
    vent = ventricle_mask(template.img, template.mask_img).get_fdata() > 0
    volume_ml = vent.sum() * 8 / 1000
    assert 5 < volume_ml < 40  # lateral ventricles of the MNI brain
    t1 = template.img.get_fdata()
    assert t1[vent].mean() < 0.5 * np.median(t1[template.mask()])
    res = rereference(chi, mask_img=template.mask_img, region="csf", template_img=template.img)
    assert res.offset == pytest.approx(float(data[vent].mean()), rel=1e-6)


def test_errors(template):
    chi = _chi(template)
    with pytest.raises(ValueError, match="'region' parameter. Allowed values are 'whole_brain'"):
        rereference(chi, mask_img=template.mask_img, region="ventricles")
    with pytest.raises(ValueError, match="'statistic' parameter.*but got 'mode'"):
        rereference(chi, mask_img=template.mask_img, statistic="mode")
    with pytest.raises(ValueError, match="region='mask' needs 'region_mask_img'"):
        rereference(chi, mask_img=template.mask_img, region="mask")
    with pytest.raises(ValueError, match="region='csf' needs the T1-like 'template_img'"):
        rereference(chi, mask_img=template.mask_img, region="csf")
    small = nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), np.eye(4))
    with pytest.raises(ValueError, match=r"The χ map \(99, 117, 95\) and the brain mask \(5, 5, 5\)"):
        rereference(chi, mask_img=small)
    odd = nib.Nifti1Image(np.ones((5, 5, 5), np.float32), np.diag([3, 3, 3, 1.0]))
    with pytest.raises(ValueError, match="1 or 2 mm MNI grids only; the χ map has a 3 mm grid"):
        rereference(odd, mask_img=nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), odd.affine),
                    region="wm")
    empty = nib.Nifti1Image(np.zeros(template.shape, np.uint8), template.affine)
    with pytest.raises(ValueError, match="no voxel inside the brain mask"):
        rereference(chi, mask_img=template.mask_img, region="mask", region_mask_img=empty)
