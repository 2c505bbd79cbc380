"""voxstats.cifti: dense CIFTI-2 in and out, brain models kept, the grayordinate graph."""

import itertools

import nibabel as nib
import numpy as np
import pytest
from nibabel.cifti2 import cifti2_axes
from scipy import sparse

from voxstats.cifti import CiftiMasker, load_cifti, load_cifti_data, save_cifti_map
from voxstats.surface import Mesh


def _octahedron():
    xyz = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float) * 10
    faces = [(a, b, c) for a in (0, 1) for b in (2, 3) for c in (4, 5)]
    return Mesh(coordinates=xyz, faces=np.array(faces))


def _square():
    xyz = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    return Mesh(coordinates=xyz, faces=np.array([[0, 1, 2], [0, 2, 3]]))


AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


def _brain_models():
    """Left cortex: octahedron without vertex 5 (its medial wall); right: square without 3;
    two volume structures that touch (thalamus, caudate), voxels listed out of C order."""
    left = cifti2_axes.BrainModelAxis.from_surface(np.array([0, 1, 2, 3, 4]), 6, "CortexLeft")
    right = cifti2_axes.BrainModelAxis.from_surface(np.array([0, 1, 2]), 4, "CortexRight")
    thal = np.array([[3, 2, 1], [2, 2, 1], [4, 2, 1], [2, 3, 1], [5, 5, 5]])  # (5,5,5) is isolated
    caud = np.array([[2, 4, 1], [2, 5, 1]])  # (2,4,1) touches thalamus voxel (2,3,1)
    vol = cifti2_axes.BrainModelAxis(name=["thalamus_left"] * 5 + ["caudate_left"] * 2,
                                     voxel=np.vstack([thal, caud]), affine=AFFINE, volume_shape=(8, 8, 8))
    return left + right + vol


def _save(path, data, models, series=False):
    rows = (cifti2_axes.SeriesAxis(0, 0.72, data.shape[0]) if series
            else cifti2_axes.ScalarAxis([f"s{i}" for i in range(data.shape[0])]))
    img = nib.Cifti2Image(np.asarray(data, np.float32), header=(rows, models))
    img.nifti_header.set_intent("ConnDenseSeries" if series else "ConnDenseScalar")
    nib.save(img, path)
    return path


@pytest.fixture
def subjects(rng):
    return rng.normal(1.0, 0.5, size=(6, 15)).astype(np.float32)


def test_round_trip_keeps_brain_models_vertices_and_voxels(tmp_path, subjects):
    models = _brain_models()
    per_subject = [_save(tmp_path / f"sub-{i}.dscalar.nii", row[None], models) for i, row in enumerate(subjects)]
    data, masker = load_cifti(per_subject, left_surf=_octahedron(), right_surf=_square())
    np.testing.assert_array_equal(data, subjects)
    out = masker.save(np.arange(15.0), tmp_path / "out_tstat1.dscalar.nii")
    img = nib.load(out)
    back = img.header.get_axis(1)
    assert back == models
    np.testing.assert_array_equal(back.vertex, models.vertex)
    np.testing.assert_array_equal(back.voxel, models.voxel)
    np.testing.assert_array_equal(back.affine, AFFINE)
    assert back.nvertices == {"CIFTI_STRUCTURE_CORTEX_LEFT": 6, "CIFTI_STRUCTURE_CORTEX_RIGHT": 4}
    np.testing.assert_array_equal(img.get_fdata()[0], np.arange(15.0))
    assert img.nifti_header.get_intent()[0] == "ConnDenseScalar"
    assert masker.position(1) == (("CIFTI_STRUCTURE_CORTEX_LEFT", 1), (-10.0, 0.0, 0.0))
    ijk = (2, 2, 1)  # element 9: the thalamus' second voxel
    assert masker.position(9) == (("CIFTI_STRUCTURE_THALAMUS_LEFT", ijk),
                                  tuple(float(v) for v in AFFINE[:3, :3] @ ijk + AFFINE[:3, 3]))
    assert list(img.header.get_axis(0).name) == ["out_tstat1"]
    # one dtseries holding every subject reads the same
    data2, _, models2 = load_cifti_data(_save(tmp_path / "all.dtseries.nii", subjects, models, series=True))
    np.testing.assert_array_equal(data2, subjects)
    assert models2 == models


def test_graph_structures_apart_mesh_and_grid(subjects):
    models = _brain_models()
    masker = CiftiMasker(brain_models=models, mask=np.ones(15, bool),
                         meshes={"CIFTI_STRUCTURE_CORTEX_LEFT": _octahedron(),
                                 "CIFTI_STRUCTURE_CORTEX_RIGHT": _square()},
                         areas={"CIFTI_STRUCTURE_CORTEX_LEFT": _octahedron().vertex_areas,
                                "CIFTI_STRUCTURE_CORTEX_RIGHT": _square().vertex_areas})
    for connectivity in (6, 18, 26):
        graph = masker.graph(connectivity)
        got = set(zip(np.repeat(np.arange(15), np.diff(graph.indptr)).tolist(), graph.indices.tolist()))
        want = set()
        octa, square = _octahedron().adjacency.toarray(), _square().adjacency.toarray()
        for a, b in itertools.permutations(range(5), 2):  # left cortex: vertices 0..4 of the octahedron
            if octa[a, b]:
                want.add((a, b))
        for a, b in itertools.permutations(range(3), 2):  # right cortex: vertices 0..2 of the square
            if square[a, b]:
                want.add((5 + a, 5 + b))
        order = {6: 1, 18: 2, 26: 3}[connectivity]
        for lo, hi in ((8, 13), (13, 15)):  # each volume structure on its own
            for a, b in itertools.permutations(range(lo, hi), 2):
                d = np.abs(models.voxel[a] - models.voxel[b])
                if d.max() == 1 and d.sum() <= order:
                    want.add((a, b))
        assert got == want
        assert (11, 13) not in got  # thalamus (2,3,1) and caudate (2,4,1) touch but stay apart
    weights = graph.weights
    np.testing.assert_allclose(weights[:5], _octahedron().vertex_areas[:5])
    np.testing.assert_allclose(weights[5:8], _square().vertex_areas[:3])
    np.testing.assert_array_equal(weights[8:], 1.0)
    np.testing.assert_array_equal(masker.on_surface, [True] * 8 + [False] * 7)


def test_mask_and_errors(tmp_path, subjects):
    models = _brain_models()
    subjects[:, 2] = 0.0  # no data at one left vertex
    path = _save(tmp_path / "all.dscalar.nii", subjects, models)
    data, masker = load_cifti(path)
    assert masker.n_elements == 14 and not masker.mask[2]
    np.testing.assert_array_equal(masker.unmask(data[0])[[0, 1, 2, 3]], [subjects[0, 0], subjects[0, 1], 0,
                                                                     subjects[0, 3]])
    with pytest.raises(ValueError, match=r"CIFTI_STRUCTURE_CORTEX_LEFT: TFCE and cluster inference need "
                                         r"this structure's mesh \(--left-surf / left_surf\)"):
        masker.graph()
    with pytest.raises(ValueError, match=r"--left-surf: .* has 4 vertices but the CIFTI file's "
                                         r"CIFTI_STRUCTURE_CORTEX_LEFT is on a mesh of 6"):
        load_cifti(path, left_surf=_square(), flag_names={"left_surf": "--left-surf"})
    other = cifti2_axes.BrainModelAxis.from_surface(np.arange(15), 20, "CortexLeft")
    odd = _save(tmp_path / "odd.dscalar.nii", subjects[:1], other)
    with pytest.raises(ValueError, match=r"odd\.dscalar\.nii and .*all\.dscalar\.nii have different brain models"):
        load_cifti_data([path, odd])
    nifti = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), nifti)
    with pytest.raises(ValueError, match=r"imgs: .*vol\.nii\.gz is not a CIFTI-2 file"):
        load_cifti_data(nifti)
    with pytest.raises(ValueError, match=r"values: expected 15 grayordinates, got 3"):
        save_cifti_map(np.zeros(3), tmp_path / "x.dscalar.nii", models)
