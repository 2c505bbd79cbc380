"""Tests for qsm.reference: offsets by hand, masks, errors."""

import nibabel as nib
import numpy as np
import pytest

from qsm.reference import rereference, template_wm_mask, ventricle_mask, wm_mask
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
    with pytest.raises(ValueError, match="no voxel with data inside the brain mask"):
        rereference(chi, mask_img=template.mask_img, region="mask", region_mask_img=empty)


def test_voxels_without_data_are_left_out_and_kept(template):
    """A map covering 78 % of the brain: offset over voxels with data, no data stays 0."""
    rng = np.random.default_rng(3)
    brain = template.mask()
    data = np.where(brain, 5.0 + rng.normal(0, 1, template.shape), 0).astype(np.float32)
    z = np.argwhere(brain)[:, 2]
    cut = np.percentile(z, 22)
    missing = brain & (np.indices(template.shape)[2] < cut)     # lower slab not reconstructed
    data[missing] = 0.0
    have = brain & ~missing
    assert 0.7 < have.sum() / brain.sum() < 0.85
    res = rereference(nib.Nifti1Image(data, template.affine), mask_img=template.mask_img)
    assert res.offset == pytest.approx(float(data[have].mean()), rel=1e-6)
    assert res.offset == pytest.approx(5.0, abs=0.02)        # not 5 x coverage (the old 3.9)
    assert res.n_voxels == have.sum() and res.n_no_data == missing.sum()
    out = res.img.get_fdata()
    np.testing.assert_array_equal(out[missing], 0.0)          # "no data" stays no data
    np.testing.assert_allclose(out[have], data[have] - res.offset, atol=1e-5)
    # the same map referenced on its own support (as the pipeline does in native space)
    support = nib.Nifti1Image(have.astype(np.uint8), template.affine)
    alone = rereference(nib.Nifti1Image(data, template.affine), mask_img=support)
    assert alone.offset == pytest.approx(res.offset, rel=1e-9)


def test_white_matter_from_any_t1_template(template):
    """Away from nilearn's grids the WM mask is the T1's brightest class: it matches nilearn's."""
    nl = wm_mask(template.img).get_fdata() > 0
    same = template_wm_mask(template.img, template.mask_img).get_fdata() > 0
    np.testing.assert_array_equal(same, nl)                    # nilearn's own template: its mask
    other = nib.Nifti1Image(template.img.get_fdata().astype(np.float32) * 1.5, template.affine)
    derived = template_wm_mask(other, template.mask_img).get_fdata() > 0
    dice = 2 * (derived & nl).sum() / (derived.sum() + nl.sum())
    assert dice > 0.7
    chi = _chi(template)
    res = rereference(chi, mask_img=template.mask_img, region="wm", template_img=other)
    assert res.offset == pytest.approx(float(chi.get_fdata()[derived & template.mask()].mean()),
                                       rel=1e-6)
