"""Tests for qsm.transforms: reading ANTs/ITK/FSL/X5 transforms and the order of chains."""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from qsm.registration import Registration
from qsm.transforms import (
    apply_transforms,
    grid_world,
    load_transform,
    load_transforms,
    rotation_matrix,
    sample,
    simulate_deformation,
)


@pytest.fixture
def image():
    shape, zoom = (30, 34, 28), 3.0
    affine = np.diag([zoom, zoom, zoom, 1.0])
    affine[:3, 3] = -np.asarray(shape) * zoom / 2
    rng = np.random.default_rng(1)
    data = ndi.gaussian_filter(rng.standard_normal(shape), 2.0).astype(np.float32)
    return nib.Nifti1Image(data * 100, affine)


@pytest.fixture
def known(image):
    """An affine P and a smooth warp u on the image grid, saved the ANTs way."""
    p = np.eye(4)
    p[:3, :3] = rotation_matrix((10.0, -5.0, 30.0)) * 1.15
    p[:3, 3] = (5.0, -3.0, 2.0)
    rng = np.random.default_rng(2)
    u = np.stack([ndi.gaussian_filter(rng.standard_normal(image.shape), 4.0) for _ in range(3)], -1)
    u = (u * 6.0 / np.abs(u).max()).astype(np.float32)
    reg = Registration(affine=p, forward_field=u, inverse_field=np.zeros_like(u),
                       template_affine=image.affine, template_shape=image.shape, engine="dipy")
    return p, u, reg


def test_warp_then_affine_order_is_pinned(image, known, tmp_path):
    """ANTs order ``-t warp -t affine``: reference x -> P (x + u(x)) in the moving image."""
    p, u, reg = known
    paths = reg.save(tmp_path, "sub-01", space="test")
    world = grid_world(image.shape, image.affine)
    expected = sample(image.get_fdata(), image.affine, (world + u) @ p[:3, :3].T + p[:3, 3], order=1)
    good = apply_transforms(image, [paths["warp"], paths["affine"]], reference=image).get_fdata()
    inner = np.zeros(image.shape, bool)
    inner[6:-6, 6:-6, 6:-6] = True
    np.testing.assert_allclose(good[inner], expected[inner], atol=1e-3)
    # the other order, P x + u(P x), is a different mapping and must not match
    wrong = apply_transforms(image, [paths["affine"], paths["warp"]], reference=image).get_fdata()
    typical = np.abs(expected[inner] - expected[inner].mean()).mean()
    assert np.abs(wrong - expected)[inner].mean() > 0.2 * typical
    assert np.abs(good - expected)[inner].mean() < 1e-4 * typical
    # and the engine's own resampling is the same mapping
    np.testing.assert_allclose(reg.transform(image).get_fdata()[inner], expected[inner], atol=1e-3)


def test_affine_file_formats_roundtrip(image, known, tmp_path):
    from nitransforms.linear import Affine

    p = known[0]
    moving = nib.Nifti1Image(image.get_fdata(), image.affine @ np.diag([1, 1, 1, 1.0]))
    itk_mat, itk_txt, fsl = tmp_path / "a.mat", tmp_path / "a.tfm", tmp_path / "flirt.mat"
    Affine(p).to_filename(itk_mat, fmt="itk")
    Affine(p).to_filename(itk_txt, fmt="itk")
    Affine(p, reference=image).to_filename(fsl, fmt="fsl", moving=moving)
    np.testing.assert_allclose(load_transform(itk_mat)[0].matrix, p, atol=1e-5)
    np.testing.assert_allclose(load_transform(itk_txt)[0].matrix, p, atol=1e-5)
    # the FLIRT text file is recognised as FSL and needs its two grids
    with pytest.raises(ValueError, match=r"flirt.mat' is an FSL matrix: pass both 'reference'"):
        load_transform(fsl)
    np.testing.assert_allclose(load_transform(fsl, reference=image, moving=moving)[0].matrix, p,
                               atol=1e-4)
    # inverting a linear file, ANTs "-t [file,1]"
    chain = load_transforms([(itk_mat, True)], reference=image)
    np.testing.assert_allclose(chain.transforms[0].matrix, np.linalg.inv(p), atol=1e-5)


def test_x5_and_fsl_warp_fields(image, known, tmp_path):
    from nitransforms.manip import TransformChain
    from nitransforms.nonlinear import DenseFieldTransform

    p, u, reg = known
    x5 = tmp_path / "chain.h5"
    reg.to_nitransforms().to_filename(x5, fmt="X5")
    loaded = load_transforms(x5, reference=image)
    assert isinstance(loaded, TransformChain) and len(loaded) == 2
    pts = grid_world(image.shape, image.affine)[::5, ::5, ::5].reshape(-1, 3)
    np.testing.assert_allclose(loaded.map(pts), reg.to_subject(pts), atol=1e-3)
    fsl_warp = tmp_path / "warp_fsl.nii.gz"
    DenseFieldTransform(u, reference=image).to_filename(fsl_warp, fmt="fsl")
    (field,) = load_transform(fsl_warp)  # 4D field -> FSL convention
    np.testing.assert_allclose(field.map(pts), pts + u[::5, ::5, ::5].reshape(-1, 3), atol=1e-4)


def test_labels_are_resampled_nearest(image, known, tmp_path):
    p, u, reg = known
    paths = reg.save(tmp_path, "sub-01", space="test")
    labels = nib.Nifti1Image((image.get_fdata() > 0).astype(np.int16) * 7, image.affine)
    out = apply_transforms(labels, [paths["warp"], paths["affine"]], reference=image,
                           interpolation="nearest")
    assert out.get_data_dtype() == np.int16
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 7}


def test_transform_errors(image, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Transform file '.*nope.mat' does not exist"):
        load_transform(tmp_path / "nope.mat")
    with pytest.raises(ValueError, match="'fmt' parameter. Allowed values are 'itk'"):
        load_transform(tmp_path / "nope.mat", fmt="spm")
    bad = tmp_path / "bad.nii.gz"
    nib.save(image, bad)
    with pytest.raises(ValueError, match=r"bad.nii.gz': expected an ITK/ANTs 5D or FSL 4D"):
        load_transform(bad)
    with pytest.raises(ValueError, match="'interpolation' parameter.*but got 'sinc'"):
        apply_transforms(image, [], reference=image, interpolation="sinc")
    with pytest.raises(ValueError, match="at least one transform"):
        apply_transforms(image, [], reference=image)
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("not a transform\n")
    with pytest.raises(ValueError, match=r"garbage.txt' could not be read as itk"):
        load_transform(garbage)


def test_simulated_deformation_is_consistent(image):
    sim = simulate_deformation(image, max_displacement_mm=0.0, blur_mm=0.0,
                               rotation_deg=(0, 0, 0), scale=(1, 1, 1),
                               translation_mm=(3.0, 0.0, 0.0), rng=0)
    world = grid_world(image.shape, image.affine)
    np.testing.assert_allclose(sim.subject_to_template, world + [3.0, 0, 0], atol=1e-4)
    # subject voxel shows the template at x + 3 mm = one voxel over
    np.testing.assert_allclose(sim.img.get_fdata()[:-1], image.get_fdata()[1:], atol=1e-4)
