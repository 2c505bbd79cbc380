"""Tests for qsm.drives and the drives of qsm.registration on a head phantom with a known warp."""

import nibabel as nib
import numpy as np
import pytest

from qsm.drives import (
    DRIVES,
    HYBRID_MU_PPM,
    default_nonlinear,
    driving_images,
    hybrid_contrast,
)
from qsm.phantom import registration_error, simulate_head
from qsm.registration import register
from qsm.template import Template

#: few iterations on a 4 mm working grid: ~15-20 s per registration
FAST = {"affine_level_iters": (60, 20, 0), "affine_sigmas": (2.0, 1.0, 0.0),
        "affine_factors": (2, 1, 1), "syn_level_iters": (20, 10)}


@pytest.fixture(scope="module")
def head():
    # 20 degrees about z, 10 about x: the head starts 24 mm (mean) from the template
    return simulate_head(rng=0, rotation_deg=(10.0, -8.0, 20.0))


def test_hybrid_contrast_by_hand():
    t1 = np.zeros((6, 6, 6))
    t1[1:5, 1:5, 1:5] = np.arange(64).reshape(4, 4, 4) + 10.0
    chi_ppb = np.zeros_like(t1)
    chi_ppb[2, 2, 2] = 150.0     # iron-rich voxel
    chi_ppb[3, 3, 3] = -40.0     # white matter
    out = hybrid_contrast(t1, chi_ppb, chi_units="ppb")
    inside = t1 > 0
    lo, hi = np.percentile(t1[inside], [0.5, 99.5])
    expected = np.clip((t1 - lo) / (hi - lo), 0, 1) * 255 - 400 * chi_ppb / 1000
    expected[~inside] = 0
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    assert out[2, 2, 2] < np.clip((t1[2, 2, 2] - lo) / (hi - lo), 0, 1) * 255 - 59.9
    # the same map in ppm gives the same contrast; mu is per ppm
    np.testing.assert_allclose(hybrid_contrast(t1, chi_ppb / 1000, chi_units="ppm"), out,
                               rtol=1e-5, atol=1e-4)
    assert HYBRID_MU_PPM == 400.0
    with pytest.raises(ValueError, match="'chi_units' parameter.*but got 'ppt'"):
        hybrid_contrast(t1, chi_ppb, chi_units="ppt")


def test_drive_inputs_and_errors(head):
    tpl = head.template
    bare = Template(img=tpl.img, mask_img=tpl.mask_img, space=tpl.space)
    for drive in ("chi", "hybrid", "multichannel"):
        with pytest.raises(ValueError, match=f"drive='{drive}' needs a template with a χ channel"):
            driving_images(drive, structural_img=head.structural_img, chi_img=head.chi_img,
                           template=bare)
    with pytest.raises(ValueError, match="drive='hybrid' needs the subject's structural image"):
        driving_images("hybrid", chi_img=head.chi_img, template=tpl)
    with pytest.raises(ValueError, match="drive='chi' needs the subject's χ map"):
        driving_images("chi", template=tpl)
    images = driving_images("multichannel", structural_img=head.structural_img,
                            chi_img=head.chi_img, template=tpl)
    np.testing.assert_array_equal(images["moving2"].get_fdata(), head.chi_img.get_fdata())
    assert default_nonlinear("structural", "MEGRE") is False
    assert default_nonlinear("structural", "T1w") is True
    assert all(default_nonlinear(d) for d in DRIVES)


def test_chi_drive_starts_from_the_brain_masks(head):
    """Centres of mass: of the masks, within a few mm of the truth; of signed χ, far off.

    QSM maps are referenced (zero mean over the brain), so the centre of mass of
    signed χ divides by a sum near zero and can land anywhere.
    """
    from dipy.align.imaffine import transform_centers_of_mass

    tpl = head.template
    images = driving_images("chi", chi_img=head.chi_img, template=tpl)
    a = tpl.affine

    def start(static, moving):
        return transform_centers_of_mass(np.asarray(static, float), a,
                                         np.asarray(moving, float), a).affine

    def referenced(img):
        data = np.asarray(img.dataobj, float)
        have = data != 0
        return np.where(have, data - data[have].mean(), 0.0)

    ours = start(images["static_init"].dataobj, images["moving_init"].dataobj)
    signed = start(referenced(images["static"]), referenced(images["moving"]))
    # truth: where the template brain's centroid sits in the subject
    centre = nib.affines.apply_affine(a, np.argwhere(tpl.mask()).mean(0))
    truth_subject = np.argwhere(np.asarray(head.chi_img.dataobj) != 0).mean(0)
    truth = nib.affines.apply_affine(a, truth_subject)
    assert np.linalg.norm(nib.affines.apply_affine(ours, centre) - truth) < 3.0
    assert np.linalg.norm(nib.affines.apply_affine(signed, centre) - truth) > 20.0


@pytest.mark.slow
@pytest.mark.parametrize("drive", ["chi", "hybrid", "multichannel"])
def test_drives_recover_a_known_warp(head, drive):
    """χ only, hybrid and multichannel end within 1.5 mm on a coarse (4 mm) working grid."""
    before = registration_error(head, None)
    reg = register(None if drive == "chi" else head.structural_img, head.template,
                   chi_img=head.chi_img, drive=drive, rng=0, resolution=4.0, params=FAST)
    assert before > 20.0
    assert reg.template_shape != head.template.shape     # fields live on the 4 mm grid
    assert registration_error(head, reg) < 1.5
    assert reg.parameters["drive"] == drive and reg.parameters["registration_resolution"] == 4.0
