"""Surface and CIFTI inputs through voxstats.loading.load and voxstats.randomise."""

import nibabel as nib
import numpy as np
import pytest
from nibabel.cifti2 import cifti2_axes

import voxstats
from voxstats.errors import ParameterError
from voxstats.loading import load
from voxstats.surface import icosphere
from voxstats.surface_loading import input_kind, tfce_defaults


def _save_gifti(path, arrays):
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(np.asarray(a, np.float32))
                                           for a in arrays]), path)
    return path


def _one_sample_t(y):
    y = np.asarray(y, dtype=np.float64)
    return y.mean(0) / (y.std(0, ddof=1) / np.sqrt(y.shape[0]))


@pytest.fixture
def surface_study(tmp_path, rng, save_surf):
    mesh = icosphere(2, radius=50.0)
    data = rng.normal(0.3, 1.0, size=(7, mesh.n_vertices)).astype(np.float32)
    data[:, :12] = 0.0  # the "medial wall"
    files = [_save_gifti(tmp_path / f"sub-{i:02d}.lh.thickness.shape.gii", [row]) for i, row in enumerate(data)]
    listing = tmp_path / "lh.thickness_list.txt"
    listing.write_text("".join(f"{f.name}\n" for f in files))
    return mesh, save_surf(tmp_path / "lh.white.surf.gii", mesh), data, files, listing


def test_input_kinds(tmp_path, surface_study):
    _, surf, _, files, listing = surface_study
    assert input_kind(files[0]) == "surface" and input_kind(listing) == "surface"
    assert input_kind([str(f) for f in files]) == "surface"
    assert input_kind("x.dscalar.nii") == "cifti" and input_kind("x.dtseries.nii") == "cifti"
    assert input_kind("x.nii.gz") == "volume" and input_kind("lh.area.mgz") == "surface"
    with pytest.raises(ParameterError, match=r"imgs: mixes inputs of kinds surface, volume"):
        input_kind([files[0], "a.nii.gz"])


def test_randomise_on_a_surface_list(tmp_path, surface_study):
    mesh, surf, data, _, listing = surface_study
    res = voxstats.randomise(listing, np.ones((7, 1)), [1.0], surf=surf, n_perm=64, rng=0)
    masker = res.masker
    assert masker.kind == "surface" and masker.n_elements == mesh.n_vertices - 12
    np.testing.assert_array_equal(masker.vertices, np.arange(12, mesh.n_vertices))
    np.testing.assert_allclose(res[0].stat, _one_sample_t(data[:, 12:]), rtol=1e-5)
    full = res.to_img(res[0].stat)
    assert full.shape == (mesh.n_vertices,) and np.all(full[:12] == 0)
    out = masker.save(res[0].p_fwe, tmp_path / f"out_vox_corrp_tstat1{masker.suffix}")
    np.testing.assert_allclose(nib.load(out).darrays[0].data[12:], res[0].p_fwe, rtol=1e-6)
    assert res.settings["tfce_E"] == 1.0  # surfaces: E = 1 unless asked otherwise


def test_load_errors(tmp_path, surface_study):
    _, surf, _, files, listing = surface_study
    with pytest.raises(ParameterError, match=r"^surf: surface data need the mesh they are on"):
        load(listing)
    with pytest.raises(ParameterError, match=r"^left_surf: only for CIFTI input"):
        load(listing, surf=surf, left_surf=surf)
    volume = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype(np.float32),
                             np.eye(4)), volume)
    with pytest.raises(ParameterError, match=r"^surf: only for surface \(GIFTI, FreeSurfer\) or CIFTI inputs"):
        load(volume, surf=surf)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'mesh'"):
        load(volume, mesh=surf)
    with pytest.raises(ParameterError, match=r"^imgs: expected at least 2 subjects, got 1"):
        load([files[0]], surf=surf)


def test_cifti_through_load(tmp_path, rng):
    left = cifti2_axes.BrainModelAxis.from_surface(np.arange(40), 42, "CortexLeft")
    vol = cifti2_axes.BrainModelAxis.from_mask(np.ones((2, 2, 2), bool), "thalamus_left", affine=np.eye(4))
    models = left + vol
    data = rng.normal(size=(6, len(models))).astype(np.float32)
    path = tmp_path / "all.dscalar.nii"
    img = nib.Cifti2Image(data, header=(cifti2_axes.ScalarAxis([str(i) for i in range(6)]), models))
    nib.save(img, path)
    matrix, masker = load(path, left_surf=icosphere(1))
    np.testing.assert_array_equal(matrix, data)
    assert masker.kind == "cifti"
    np.testing.assert_array_equal(tfce_defaults(masker), [1.0] * 40 + [0.5] * 8)
    with pytest.raises(ParameterError, match=r"^surf: CIFTI input takes one mesh per hemisphere"):
        load(path, surf=icosphere(1))
    res = voxstats.randomise(path, np.ones((6, 1)), [1.0], left_surf=icosphere(1), n_perm=32, rng=1)
    np.testing.assert_allclose(res[0].stat, _one_sample_t(data), rtol=1e-5)
