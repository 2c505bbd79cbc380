"""Reading subjects' maps, masks and image lists (voxstats.loading), against NumPy on the whole array."""

import logging
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from voxstats.errors import MissingFileError, ParameterError
from voxstats.loading import _compact, check_mask, load, read_image_list
from voxstats.masker import VolumeMasker

SHAPE = (6, 7, 5)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
N = 9


def _reference(volumes, keep_constant=False):
    """randomise's default mask and the matrix, from the whole (x, y, z, n) array."""
    finite = np.all(np.isfinite(volumes), axis=-1)
    varies = np.any(volumes != volumes[..., :1], axis=-1)
    mask = finite if keep_constant else finite & varies
    return np.moveaxis(volumes, -1, 0)[:, mask].astype(np.float32), mask


@pytest.fixture
def volumes():
    """Maps whose coverage differs between subjects, with NaN, constants and late joiners."""
    rng = np.random.default_rng(3)
    vols = rng.normal(10, 2, SHAPE + (N,)).astype(np.float32)
    vols[0] = 0.0  # outside every subject's brain
    vols[1, :, :, :4] = 0.0  # zero in the first four subjects only: joins late
    vols[2, 0, :, :] = 5.0  # constant but not zero
    vols[2, 1, 0, :] = np.nan  # NaN everywhere
    vols[2, 2, 0, 6] = np.nan  # a varying voxel that turns NaN late
    vols[2, 3, 0, :-1] = 7.0  # constant except in the very last subject
    vols[2, 3, 1, 1:] = 7.0  # differs from the first subject only
    vols[3, 3, 3, 5] = np.inf
    return vols


def _write_list(tmp_path, vols, folder="subjects"):
    sub = tmp_path / folder
    sub.mkdir(exist_ok=True)
    names = []
    for i in range(vols.shape[-1]):
        nib.save(nib.Nifti1Image(vols[..., i], AFFINE), sub / f"s{i}.nii.gz")
        names.append(f"{folder}/s{i}.nii.gz")
    return names


@pytest.mark.parametrize("keep_constant", [False, True])
def test_default_mask_equals_numpy_on_the_whole_array(tmp_path, volumes, keep_constant):
    expected, mask = _reference(volumes, keep_constant)
    assert 0 < mask.sum() < mask.size
    four_d = tmp_path / "all.nii.gz"
    nib.save(nib.Nifti1Image(volumes, AFFINE), four_d)
    names = _write_list(tmp_path, volumes)
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    sources = [str(four_d), nib.load(four_d), [str(tmp_path / n) for n in names],
               [nib.Nifti1Image(volumes[..., i], AFFINE) for i in range(N)], tmp_path / "list.txt"]
    for source in sources:
        data, masker = load(source, keep_constant=keep_constant)
        assert data.dtype == np.float32 and data.flags.c_contiguous and data.flags.writeable
        np.testing.assert_array_equal(masker.mask, mask)
        np.testing.assert_array_equal(data, expected)
        np.testing.assert_array_equal(masker.affine, AFFINE)
    # the late joiners are in: constant up to the last subject, or differing only in the first one
    assert mask[2, 3, 0] and mask[2, 3, 1] and mask[1].any()
    assert not mask[2, 2, 0] and not mask[3, 3, 3] and not mask[2, 1, 0]  # NaN or inf somewhere
    assert mask[2, 0].all() == keep_constant  # constant 5


def test_compact_moves_every_row_to_its_place():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 8))
        lengths = np.sort(rng.integers(0, 12, n)).tolist()
        k = int(rng.integers(0, max(lengths) + 2))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
        size = max(sum(lengths), n * k)
        buffer = np.full(size, -1.0, dtype=np.float32)
        rows = [rng.normal(size=length).astype(np.float32) for length in lengths]
        for start, row in zip(starts, rows):
            buffer[start:start + row.size] = row
        finals = [rng.normal(size=k).astype(np.float32) for _ in range(n)]
        seen = {}

        def final_row(i, stored):
            seen[i] = stored.copy()
            return finals[i]

        _compact(buffer, starts, lengths, k, final_row)
        for i in range(n):  # each row was read intact before anything overwrote it
            np.testing.assert_array_equal(seen[i], rows[i])
        np.testing.assert_array_equal(buffer[:n * k], np.concatenate(finals) if n * k else buffer[:0])


def test_4d_gz_is_decompressed_once(tmp_path, volumes, monkeypatch):
    path = tmp_path / "all.nii.gz"
    nib.save(nib.Nifti1Image(np.nan_to_num(volumes, posinf=1.0), AFFINE), path)
    opened = []
    real = nib.openers.Opener.__init__

    def counting(self, fileish, *args, **kwargs):
        opened.append(str(fileish))
        real(self, fileish, *args, **kwargs)

    monkeypatch.setattr(nib.openers.Opener, "__init__", counting)
    data, masker = load(str(path))
    data_files = [f for f in opened if f.endswith("all.nii.gz")]
    # the header twice, then one stream for all volumes (not one opening per volume)
    assert len(data_files) <= 4 < N, opened
    assert data.shape == (N, masker.n_elements)


def test_peak_memory_is_about_the_matrix(tmp_path):
    """tracemalloc counts numpy's buffers: the load holds the matrix, not the 4D grid."""
    rng = np.random.default_rng(1)
    shape = (40, 40, 30)
    n = 30
    vols = np.zeros(shape + (n,), dtype=np.float32)
    brain = np.zeros(shape, dtype=bool)
    brain[12:28, 12:28, 8:22] = True  # 3,584 of 48,000 voxels
    vols[brain] = rng.normal(size=(int(brain.sum()), n))
    path = tmp_path / "all.nii.gz"
    nib.save(nib.Nifti1Image(vols, AFFINE), path)
    del vols
    matrix_bytes = n * int(brain.sum()) * 4
    volume_bytes = int(np.prod(shape)) * 4
    for mask_img in (None, nib.Nifti1Image(brain.astype(np.uint8), AFFINE)):
        tracemalloc.start()
        data, _ = load(str(path), mask_img)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert data.nbytes == matrix_bytes
        # the 4D grid would be 30 volumes (5.8 MB); allow the matrix plus a few volumes of work space
        assert peak < 1.1 * matrix_bytes + 8 * volume_bytes, (peak, matrix_bytes, volume_bytes)


def test_given_mask_nan_is_outside(tmp_path, volumes):
    clean = np.nan_to_num(volumes, nan=1.0, posinf=1.0)
    mask = np.full(SHAPE, np.nan, dtype=np.float32)
    mask[1:4, 1:5, 1:4] = 1.0
    mask[1, 1, 1] = 0.0
    mask[2, 2, 2] = -3.0  # non-zero: inside
    mask[3, 3, 2] = np.inf  # not finite: outside
    nib.save(nib.Nifti1Image(mask, AFFINE), tmp_path / "mask.nii.gz")
    inside = np.isfinite(mask) & (mask != 0)
    data, masker = load([nib.Nifti1Image(clean[..., i], AFFINE) for i in range(N)],
                        tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(masker.mask, inside)
    np.testing.assert_array_equal(data, np.moveaxis(clean, -1, 0)[:, inside])
    assert masker.n_elements == 3 * 4 * 3 - 2
    read, _ = check_mask(tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(read, inside)


def test_mask_errors(tmp_path, volumes):
    imgs = [nib.Nifti1Image(np.nan_to_num(volumes[..., i]), AFFINE) for i in range(N)]
    nib.save(nib.Nifti1Image(np.full(SHAPE, np.nan, np.float32), AFFINE), tmp_path / "nan.nii.gz")
    with pytest.raises(ParameterError, match=r"^mask_img: the mask .*nan.nii.gz is empty \(no voxel finite"):
        load(imgs, tmp_path / "nan.nii.gz")
    with pytest.raises(MissingFileError, match=r"^mask_img: file not found: .*none.nii.gz"):
        load(imgs, tmp_path / "none.nii.gz")
    with pytest.raises(ParameterError, match=r"^-m: the mask .* is empty"):
        load(imgs, tmp_path / "nan.nii.gz", mask_name="-m")
    mask = np.ones(SHAPE, np.uint8)
    with pytest.raises(ParameterError, match=r"NaN or infinite values inside the mask"):
        load([nib.Nifti1Image(volumes[..., i], AFFINE) for i in range(N)], nib.Nifti1Image(mask, AFFINE))


def test_image_list_rules(tmp_path, volumes, monkeypatch, caplog):
    names = _write_list(tmp_path, volumes[..., :4])
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"\xef\xbb\xbf" + ("# subjects\n\n  " + "\n".join(names) + "  \n").encode())
    assert read_image_list(lst) == [tmp_path / n for n in names]  # BOM, comment, blanks, spaces
    # a duplicate: kept, with a warning naming both lines
    lst.write_text("\n".join(names + [names[1]]) + "\n")
    with caplog.at_level(logging.WARNING, logger="voxstats.loading"):
        assert len(read_image_list(lst)) == 5
    assert f"{lst}, lines 2 and 5: the same image" in caplog.text
    # entries are relative to the list's folder, never the working directory
    elsewhere = tmp_path / "lists"
    elsewhere.mkdir()
    (elsewhere / "list.txt").write_text("\n".join(names) + "\n")
    monkeypatch.chdir(tmp_path)  # where the entries would resolve against the working directory
    with pytest.raises(ParameterError, match=r"list.txt, line 1: expected an existing image file "
                                             rf"\(relative to {elsewhere}\), got 'subjects/s0.nii.gz'"):
        read_image_list(elsewhere / "list.txt")
    absolute = tmp_path / "abs.txt"
    absolute.write_text("\n".join(str(tmp_path / n) for n in names) + "\n")
    assert read_image_list(absolute) == [tmp_path / n for n in names]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ParameterError, match=r"^-i: .*empty.txt: expected image paths one per line, got none"):
        read_image_list(tmp_path / "empty.txt", name="-i")
    (tmp_path / "binary.lst").write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
    with pytest.raises(ParameterError, match=r"expected a NIfTI image \(.nii, .nii.gz\) or a text file"):
        load(tmp_path / "binary.lst")


def test_subject_count_and_space_errors(tmp_path, volumes):
    img = nib.Nifti1Image(volumes[..., 0], AFFINE)
    with pytest.raises(ParameterError, match=r"^imgs: expected at least 2 subjects, got 1"):
        load([img])
    with pytest.raises(ParameterError, match=r"^imgs: expected at least 2 subjects, got an empty list"):
        load([])
    nib.save(img, tmp_path / "one.nii.gz")
    with pytest.raises(ParameterError, match=r"^imgs: expected a 4D image, got shape \(6, 7, 5\) in .*one"):
        load(tmp_path / "one.nii.gz")
    other = nib.Nifti1Image(volumes[..., 1], np.diag([3.0, 2, 2, 1]))
    with pytest.raises(ValueError, match=r"one.nii.gz and imgs\[1\] are not in the same space: affines"):
        load([img, other])  # nib.save gave ``img`` its file name
    with pytest.raises(TypeError, match=r"imgs: expected a 4D image, a list of 3D images or their file names"):
        load(np.zeros((3, 3)))


def test_volume_masker_round_trip(tmp_path):
    mask = np.zeros(SHAPE, bool)
    mask[1:3, 2:5, 1] = True
    masker = VolumeMasker(mask, AFFINE)
    values = np.arange(masker.n_elements, dtype=np.float64) + 0.5
    img = masker.unmask(values)
    assert img.shape == SHAPE and img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(img.dataobj)[mask], values.astype(np.float32))
    assert np.all(np.asarray(img.dataobj)[~mask] == 0)
    assert masker.unmask(np.arange(masker.n_elements)).get_data_dtype() == np.int32
    path = masker.save(values, tmp_path / f"map{masker.suffix}")
    np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), np.asarray(img.dataobj))
    ijk, xyz = masker.position(4)
    assert ijk == tuple(np.argwhere(mask)[4]) and xyz == tuple(2.0 * np.array(ijk))
    graph = masker.graph(6)
    assert graph.n_voxels == masker.n_elements
    with pytest.raises(ValueError, match=r"values: expected shape \(6,\), got \(2,\)"):
        masker.unmask([1.0, 2.0])
    with pytest.raises(ValueError, match="read-only"):
        masker.mask[0, 0, 0] = True

