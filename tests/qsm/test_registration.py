"""Tests for qsm.registration: accuracy on a known deformation, conventions, errors."""

import importlib.util

import nibabel as nib
import numpy as np
import pytest

from qsm.registration import Registration, register
from qsm.template import load_template
from qsm.transforms import (
    apply_transforms,
    grid_world,
    sample,
    sample_field,
    simulate_deformation,
)

HAS_ANTS = importlib.util.find_spec("ants") is not None


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def template():
    return load_template(resolution=2)


@pytest.fixture(scope="module")
def simulated(template):
    # affine (rotations 4-6 deg, 10 mm translation, 3-5 % scaling) + smooth 8 mm warp + blur
    return simulate_deformation(template.img, max_displacement_mm=8.0, smoothness_mm=12.0,
                                blur_mm=1.0, rng=0)


@pytest.fixture(scope="module")
def registered(template, simulated):
    return register(simulated.img, template, rng=0)


def _mean_error(template, simulated, reg):
    """Mean |phi(T(x)) - x| over the template brain mask, in mm."""
    world = grid_world(template.shape, template.affine)
    mapped = world if reg is None else reg.to_subject(world)
    back = sample_field(simulated.subject_to_template, simulated.img.affine, mapped)
    return np.linalg.norm(back - world, axis=-1)[template.mask()].mean()


def _thalamus_labels(template):
    world = grid_world(template.shape, template.affine)
    labels = np.zeros(template.shape, np.int16)
    for value, centre in ((1, (-12.0, -18.0, 8.0)), (2, (12.0, -18.0, 8.0))):
        labels[np.linalg.norm(world - centre, axis=-1) <= 8.0] = value  # ~2.1 ml each
    return nib.Nifti1Image(labels, template.affine)


def _check_recovers_known_deformation(template, simulated, registered):
    before = _mean_error(template, simulated, None)
    after = _mean_error(template, simulated, registered)
    assert 9.0 < before < 16.0
    assert after < 1.5
    assert registered.engine == "dipy" and registered.nonlinear
    assert registered.forward_field.shape == template.shape + (3,)


def _check_syn_improves_on_affine(template, simulated, registered):
    aff_a = register(simulated.img, template, nonlinear=False, rng=3)
    assert aff_a.forward_field is None and not aff_a.nonlinear
    err_affine = _mean_error(template, simulated, aff_a)
    assert err_affine < 4.0
    assert _mean_error(template, simulated, registered) < err_affine - 0.3


def _check_labels_through_inverse_transform(template, simulated, registered):
    labels = _thalamus_labels(template)
    # ground truth: the labels as they sit in the deformed subject
    truth = np.rint(sample(np.asarray(labels.dataobj), template.affine,
                           simulated.subject_to_template, order=0)).astype(np.int16)
    carried = registered.inverse_transform(labels, reference=simulated.img)
    data = np.asarray(carried.dataobj)
    assert data.dtype == np.int16
    assert set(np.unique(data)) == {0, 1, 2}
    for value in (1, 2):
        assert _dice(data == value, truth == value) > 0.8
    # nearest neighbour: never a value that is not a label
    assert np.array_equal(np.unique(data), np.unique(np.asarray(labels.dataobj)))


def _check_saved_transforms_reproduce_engine(template, simulated, registered, tmp_path):
    paths = registered.save(tmp_path, "sub-01", space=template.space)
    assert all(p.exists() for p in paths.values())
    ours = np.asarray(registered.transform(simulated.img).dataobj)
    theirs = np.asarray(apply_transforms(simulated.img, [paths["warp"], paths["affine"]],
                                         reference=template.img).dataobj)
    mask = template.mask()
    scale = np.abs(ours[mask]).max()
    assert np.abs(ours - theirs)[mask].max() < 1e-4 * scale
    # the inverse chain (ANTs "-t [affine,1] -t inverse_warp") carries labels like the engine
    labels = _thalamus_labels(template)
    ours_l = np.asarray(registered.inverse_transform(labels, reference=simulated.img).dataobj)
    theirs_l = np.asarray(apply_transforms(labels, [(paths["affine"], True), paths["inverse_warp"]],
                                           reference=simulated.img,
                                           interpolation="nearest").dataobj)
    for value in (1, 2):
        assert _dice(ours_l == value, theirs_l == value) > 0.95
    # and the in-memory nitransforms chain agrees with the files
    from nitransforms.resampling import apply

    chained = apply(registered.to_nitransforms(), simulated.img, reference=template.img, order=1)
    assert np.abs(np.asarray(chained.dataobj) - ours)[mask].max() < 1e-4 * scale


@pytest.mark.slow
def test_dipy_registration_of_known_deformation(template, simulated, registered, tmp_path):
    """One registration (about 10-15 s) checked four ways (kept in one test for xdist)."""
    _check_recovers_known_deformation(template, simulated, registered)
    _check_labels_through_inverse_transform(template, simulated, registered)
    _check_saved_transforms_reproduce_engine(template, simulated, registered, tmp_path)
    _check_syn_improves_on_affine(template, simulated, registered)


def _blob(shift_mm=(0.0, 0.0, 0.0), shape=(40, 44, 36), zoom=3.0):
    affine = np.diag([zoom, zoom, zoom, 1.0])
    affine[:3, 3] = -np.asarray(shape) * zoom / 2
    world = grid_world(shape, affine) - np.asarray(shift_mm)
    r = np.linalg.norm(world / np.array([40.0, 50.0, 35.0]), axis=-1)
    inner = np.linalg.norm((world - [10, 5, 0]) / np.array([12.0, 9.0, 8.0]), axis=-1)
    data = (r < 1) * 1.0 + (inner < 1) * 0.8 + (np.abs(world[..., 0] + 15) < 4) * (r < 1) * 0.5
    return nib.Nifti1Image(data.astype(np.float32), affine)


def test_affine_recovers_translation_convention():
    """Template point x maps to subject point x + shift for a subject shifted by +shift."""
    from qsm.template import Template

    tpl_img = _blob()
    mask = nib.Nifti1Image((tpl_img.get_fdata() > 0).astype(np.uint8), tpl_img.affine)
    template = Template(img=tpl_img, mask_img=mask, space="blob")
    shift = np.array([6.0, -4.5, 3.0])
    reg = register(_blob(shift), template, nonlinear=False, rng=0,
                   params={"sampling_proportion": None, "affine_level_iters": (100, 50, 20)})
    again = register(_blob(shift), template, nonlinear=False, rng=7,
                     params={"sampling_proportion": 0.5, "affine_level_iters": (30, 10, 0)})
    same = register(_blob(shift), template, nonlinear=False, rng=7,
                    params={"sampling_proportion": 0.5, "affine_level_iters": (30, 10, 0)})
    np.testing.assert_array_equal(again.affine, same.affine)  # seeded sparse sampling
    np.testing.assert_allclose(reg.affine[:3, 3], shift, atol=0.6)
    np.testing.assert_allclose(reg.affine[:3, :3], np.eye(3), atol=0.03)
    pts = np.array([[0.0, 0.0, 0.0], [10.0, -5.0, 4.0]])
    expected = pts @ reg.affine[:3, :3].T + reg.affine[:3, 3]
    np.testing.assert_allclose(reg.to_subject(pts), expected, atol=1e-6)
    np.testing.assert_allclose(reg.to_template(reg.to_subject(pts)), pts, atol=1e-6)


def test_registration_transform_identity_is_exact():
    img = _blob()
    reg = Registration(affine=np.eye(4), forward_field=np.zeros(img.shape + (3,), np.float32),
                       inverse_field=np.zeros(img.shape + (3,), np.float32),
                       template_affine=img.affine, template_shape=img.shape, engine="dipy")
    for interpolation in ("nearest", "linear", "cubic"):
        out = reg.transform(img, interpolation=interpolation)
        np.testing.assert_allclose(np.asarray(out.dataobj), img.get_fdata(), atol=1e-5)
    with pytest.raises(ValueError, match="'interpolation' parameter.*but got 'spline9'"):
        reg.transform(img, interpolation="spline9")


def test_register_option_errors(template):
    img = template.img
    with pytest.raises(ValueError, match="'engine' parameter. Allowed values are 'dipy', 'ants'"):
        register(img, template, engine="fsl")
    with pytest.raises(ValueError, match="drive='chi' needs a template with a χ channel"):
        register(img, template, chi_img=img, drive="chi")
    with pytest.raises(ValueError, match=r"Unknown registration parameter\(s\) \['iters'\]"):
        register(img, template, params={"iters": 3})
    with pytest.raises(ValueError, match="'multichannel' is implemented for engine='dipy' only"):
        register(img, template, chi_img=img, drive="multichannel", engine="ants")


@pytest.mark.skipif(HAS_ANTS, reason="antspyx is installed")
def test_ants_engine_missing_is_a_clear_error(template):
    with pytest.raises(ImportError, match=r"needs antspyx.*voxstats\[ants\]"):
        register(template.img, template, engine="ants")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ANTS, reason="antspyx (optional extra) not installed")
def test_ants_engine_recovers_known_deformation(template, simulated):  # pragma: no cover
    reg = register(simulated.img, template, engine="ants", rng=0)
    assert _mean_error(template, simulated, reg) < 1.5
