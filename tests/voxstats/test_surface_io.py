"""voxstats.surface_io: per-vertex data in GIFTI, FreeSurfer curv and MGH/MGZ; the surface masker."""

import nibabel as nib
import numpy as np
import pytest

from voxstats.surface import Mesh
from voxstats.surface_io import (load_surface, load_surface_data, read_surface_labels, read_vertex_mask,
                                 save_surface_map)


def _octahedron():
    xyz = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    faces = [(a, b, c) for a in (0, 1) for b in (2, 3) for c in (4, 5)]
    return Mesh(coordinates=xyz, faces=np.array(faces))


def _save_gifti(path, arrays, structure="CortexLeft"):
    darrays = [nib.gifti.GiftiDataArray(np.asarray(a, np.float32), intent="NIFTI_INTENT_SHAPE",
                                        meta={"AnatomicalStructurePrimary": structure}) for a in arrays]
    nib.save(nib.gifti.GiftiImage(darrays=darrays), path)
    return path


@pytest.fixture
def maps(rng):
    values = rng.normal(2.5, 0.3, size=(5, 6)).astype(np.float32)
    values[:, 5] = 0.0  # a "medial wall" vertex, 0 in every subject
    return values


@pytest.mark.parametrize("layout", ["per-subject", "multi-darray", "2d-darray", "curv", "mgh", "mgz-frames"])
def test_every_layout_reads_the_same_matrix(tmp_path, maps, layout):
    if layout == "per-subject":
        imgs = [_save_gifti(tmp_path / f"sub-{i}.shape.gii", [row]) for i, row in enumerate(maps)]
    elif layout == "multi-darray":
        imgs = _save_gifti(tmp_path / "all.func.gii", list(maps))
    elif layout == "2d-darray":
        imgs = _save_gifti(tmp_path / "all.func.gii", [maps.T])
    elif layout == "curv":
        imgs = []
        for i, row in enumerate(maps):
            path = tmp_path / f"sub-{i}.lh.thickness"
            nib.freesurfer.write_morph_data(str(path), row)
            imgs.append(path)
    elif layout == "mgh":
        imgs = []
        for i, row in enumerate(maps):
            path = tmp_path / f"sub-{i}.mgh"
            nib.save(nib.MGHImage(row.reshape(-1, 1, 1), np.eye(4)), path)
            imgs.append(path)
    else:
        imgs = tmp_path / "all.mgz"
        nib.save(nib.MGHImage(maps.T.reshape(6, 1, 1, 5), np.eye(4)), imgs)
    data, names, fmt = load_surface_data(imgs)
    np.testing.assert_array_equal(data, maps)
    assert data.dtype == np.float32 and len(names) == 5
    assert fmt.suffix == {"per-subject": ".func.gii", "multi-darray": ".func.gii", "2d-darray": ".func.gii",
                          "curv": ".mgz", "mgh": ".mgh", "mgz-frames": ".mgz"}[layout]


def test_load_surface_masks_the_medial_wall_and_writes_back(tmp_path, maps, save_surf):
    mesh = _octahedron()
    surf = save_surf(tmp_path / "lh.white.surf.gii", mesh)
    imgs = [_save_gifti(tmp_path / f"sub-{i}.shape.gii", [row]) for i, row in enumerate(maps)]
    data, masker = load_surface(imgs, surf)
    np.testing.assert_array_equal(masker.mask, [True] * 5 + [False])
    np.testing.assert_array_equal(data, maps[:, :5])
    assert masker.n_elements == 5 and masker.suffix == ".func.gii"
    np.testing.assert_allclose(masker.areas, mesh.vertex_areas, rtol=1e-6)
    graph = masker.graph()
    np.testing.assert_allclose(graph.weights, mesh.vertex_areas[:5], rtol=1e-6)
    out = masker.save(np.arange(1.0, 6.0), tmp_path / "out_tstat1.func.gii")
    img = nib.load(out)
    np.testing.assert_array_equal(img.darrays[0].data, [1, 2, 3, 4, 5, 0])
    assert img.darrays[0].data.dtype == np.float32
    assert img.darrays[0].meta["AnatomicalStructurePrimary"] == "CortexLeft"
    np.testing.assert_array_equal(masker.coordinates, mesh.coordinates[:5])
    assert masker.kind == "surface" and masker.position(3) == (3, (0.0, -1.0, 0.0))


def test_default_mask_is_randomise_s(tmp_path, maps):
    """Not constant across subjects and finite: a single 0 does not remove a vertex, a constant 2 does."""
    maps = maps.copy()
    maps[0, 1] = 0.0
    maps[:, 2] = 2.0
    maps[3, 4] = np.nan
    imgs = _save_gifti(tmp_path / "all.func.gii", list(maps))
    _, masker = load_surface(imgs, _octahedron())
    np.testing.assert_array_equal(masker.mask, [True, True, False, True, False, False])
    _, masker = load_surface(imgs, _octahedron(), keep_constant=True)
    np.testing.assert_array_equal(masker.mask, [True, True, True, True, False, True])


def test_user_mask_label_and_areas(tmp_path, maps):
    mesh = _octahedron()
    imgs = _save_gifti(tmp_path / "all.func.gii", list(maps))
    label = tmp_path / "lh.cortex.label"
    label.write_text("#!ascii label\n3\n0 1.0 0.0 0.0 0.0\n2 0.0 1.0 0.0 0.0\n4 0.0 0.0 1.0 0.0\n")
    data, masker = load_surface(imgs, mesh, mask_img=label, areas=2.0)
    np.testing.assert_array_equal(masker.vertices, [0, 2, 4])
    np.testing.assert_array_equal(data, maps[:, [0, 2, 4]])
    np.testing.assert_array_equal(masker.areas, np.full(6, 2.0))
    area_file = _save_gifti(tmp_path / "lh.white.avg.area.shape.gii", [np.arange(6.0)])
    _, masker = load_surface(imgs, mesh, areas=area_file)
    np.testing.assert_array_equal(masker.areas, np.arange(6.0))
    mask_file = _save_gifti(tmp_path / "mask.shape.gii", [[1, 1, 0, 0, 1, np.nan]])
    np.testing.assert_array_equal(read_vertex_mask(mask_file, 6), [True, True, False, False, True, False])


def test_mgh_output_keeps_the_affine(tmp_path, maps):
    affine = np.diag([-1.0, 1, 1, 1])
    path = tmp_path / "all.mgz"
    nib.save(nib.MGHImage(maps.T.reshape(6, 1, 1, 5), affine), path)
    data, masker = load_surface(path, _octahedron())
    out = masker.save(np.ones(5), tmp_path / f"out{masker.suffix}")
    img = nib.load(out)
    assert img.shape == (6, 1, 1)
    np.testing.assert_array_equal(img.affine, affine)
    np.testing.assert_array_equal(np.asarray(img.dataobj).ravel(), [1, 1, 1, 1, 1, 0])


def test_surface_labels_from_annot_and_label_gii(tmp_path):
    labels = np.array([0, 0, 1, 1, 2, -1])
    ctab = np.array([[25, 5, 25, 0, 0], [220, 20, 10, 0, 0], [20, 30, 140, 0, 0]])
    annot = tmp_path / "lh.aparc.annot"
    nib.freesurfer.write_annot(str(annot), labels, ctab, [b"unknown", b"precentral", b"postcentral"],
                               fill_ctab=True)
    got, names = read_surface_labels(annot, 6)
    np.testing.assert_array_equal(got, labels)
    assert names[1] == "precentral" and names[2] == "postcentral"
    table = nib.gifti.GiftiLabelTable()
    for key, name in ((0, "???"), (7, "V1"), (9, "MT")):
        lab = nib.gifti.GiftiLabel(key=key)
        lab.label = name
        table.labels.append(lab)
    gii = tmp_path / "lh.atlas.label.gii"
    nib.save(nib.gifti.GiftiImage(labeltable=table, darrays=[
        nib.gifti.GiftiDataArray(np.array([0, 7, 7, 9, 9, 0], np.int32), intent="NIFTI_INTENT_LABEL")]), gii)
    got, names = read_surface_labels(gii, 6)
    np.testing.assert_array_equal(got, [0, 7, 7, 9, 9, 0])
    assert names == {0: "???", 7: "V1", 9: "MT"}


def test_errors_name_the_file(tmp_path, maps, save_surf):
    mesh = _octahedron()
    surf = save_surf(tmp_path / "lh.white.surf.gii", mesh)
    good = _save_gifti(tmp_path / "a.func.gii", [maps[0]])
    short = _save_gifti(tmp_path / "b.func.gii", [maps[1, :4]])
    with pytest.raises(ValueError, match=r"b\.func\.gii has 4 vertices but .*a\.func\.gii has 6"):
        load_surface_data([good, short])
    with pytest.raises(ValueError, match=r"^surf: surf has 4 vertices but the maps \(.*a\.func\.gii\) have 6"):
        load_surface(good, (mesh.coordinates[:4], np.array([[0, 2, 3]])))
    with pytest.raises(ValueError, match=r"^imgs: expected at least 2 subjects, got 1"):
        load_surface(good, surf)
    with pytest.raises(ValueError, match=r"imgs\[0\]: cannot read .*lh\.white\.surf\.gii as per-vertex data "
                                         r"\(it is a surface mesh"):
        load_surface_data([surf])
    text = tmp_path / "list.txt"
    text.write_text("x\n")
    with pytest.raises(ValueError, match=r"imgs: cannot read .*list\.txt as per-vertex data: expected GIFTI"):
        load_surface_data(text)
    broken = tmp_path / "broken.func.gii"
    broken.write_text("<GIFTI><DataArray")
    with pytest.raises(ValueError, match=r"imgs: cannot read .*broken\.func\.gii as per-vertex data"):
        load_surface_data(broken)
    with pytest.raises(FileNotFoundError, match=r"imgs\[1\]: file not found: .*missing\.func\.gii"):
        load_surface_data([good, tmp_path / "missing.func.gii"])
    nan = maps.copy()
    nan[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"imgs: .*sub-2\.func\.gii: NaN or infinite values at 1 vertices inside "):
        load_surface([_save_gifti(tmp_path / f"sub-{i}.func.gii", [r]) for i, r in enumerate(nan)], surf,
                     mask_img=np.ones(6))
    with pytest.raises(ValueError, match=r"mask_img: the mask is empty"):
        load_surface([good, good], surf, mask_img=np.zeros(6))
    with pytest.raises(ValueError, match=r"mask_img: no vertex to analyse \(none is finite in every subject and "
                                         r"varies across subjects\)"):
        load_surface(_save_gifti(tmp_path / "flat.func.gii", [np.ones(6), np.ones(6)]), surf)


def test_save_surface_map_is_atomic_and_float32(tmp_path, maps):
    _, _, fmt = load_surface_data(_save_gifti(tmp_path / "x.func.gii", [maps[0]]))
    out = save_surface_map(np.arange(6), tmp_path / "deep" / "m.func.gii", fmt)
    assert [p.name for p in out.parent.iterdir()] == ["m.func.gii"]
    np.testing.assert_array_equal(nib.load(out).darrays[0].data, np.arange(6, dtype=np.float32))
