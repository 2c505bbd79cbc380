"""Reading the inputs of an analysis: one reader per kind, used by every entry point.

:func:`voxstats.randomise`, ``voxstats randomise``, ``voxstats tfce`` and
``voxstats cluster`` read their inputs here, so that a bad file gets the same
one-line error (naming the file, or the parameter or flag) wherever it enters:

- images: :func:`voxstats.image.check_img` (missing, unreadable, truncated,
  complex-valued, NaN affine, wrong dimensionality);
- masks: :func:`check_mask`. One rule for what is inside a mask: **finite and
  non-zero** (NaN and infinity are outside);
- image lists: :func:`read_image_list`. One path per line; blank lines and
  ``#`` comments skipped; a UTF-8 byte-order mark accepted; relative paths are
  relative to the list's own folder, never the working directory; a duplicate
  entry is a warning naming both lines;
- subjects' maps: :func:`load`, which returns the (n_subjects, n_elements)
  float32 matrix and the masker (:mod:`voxstats.masker`) that maps its columns
  back to files.

Memory: :func:`load` reads one volume at a time (a 4D ``.nii.gz`` is
decompressed once, front to back) and keeps only the masked values, so the
peak is about the float32 matrix it returns, never the whole 4D grid.

The default mask (no ``mask_img``) is FSL randomise's: the voxels that are not
constant across subjects, and finite in every subject. ``keep_constant=True``
(randomise's ``--norcmask``) keeps the constant voxels too.
"""

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .errors import MissingFileError, ParameterError
from .image import _name, _reason, check_img, check_same_space, iter_volumes, read_data
from .masker import VolumeMasker

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "check_mask", "is_image_path", "load", "read_image_list"]

#: File name endings read as images; any other file given as ``imgs`` is read as a list.
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".img", ".hdr", ".img.gz")


def is_image_path(path):
    """True if ``path``'s name ends like a NIfTI/ANALYZE image."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def read_image_list(path, *, name="imgs", warn=True):
    """The image paths listed in a text file, one per line.

    Parameters
    ----------
    path : str or path-like
        UTF-8 text (a byte-order mark is accepted). Blank lines and lines
        starting with ``#`` are skipped; surrounding whitespace is stripped.
        Relative entries are relative to the list's folder (not the working
        directory).
    name : str
        The parameter or flag named in error messages.
    warn : bool
        Warn about a path listed twice. Readers that only probe the list (its
        kind, its length) pass False, so a run warns once, when it loads.

    Returns
    -------
    list of pathlib.Path
        Existing files, in the list's order.

    Raises
    ------
    voxstats.errors.MissingFileError
        The list does not exist.
    voxstats.errors.ParameterError
        The list is not UTF-8 text, holds no entry, or an entry does not exist
        beside it (the message gives the line number).

    Notes
    -----
    A path listed twice is analysed twice, as asked, with a warning naming both
    lines.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(name, path)
    if path.is_dir():
        raise ParameterError(name, f"{path} is a folder; expected a 4D image or a text file listing "
                             "3D images one per line")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise ParameterError(name, f"{path}: expected a NIfTI image (.nii, .nii.gz) or a text file listing "
                             "3D images one per line") from None
    imgs, seen = [], {}
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        item = Path(line)
        if not item.is_absolute():
            item = Path(os.path.normpath(path.parent / item))
        if not item.is_file():
            raise ParameterError(name, f"{path}, line {lineno}: expected an existing image file "
                                 f"(relative to {path.parent}), got {line!r}")
        key = os.path.normcase(os.path.realpath(item))
        if key in seen and warn:
            logger.warning("%s, lines %d and %d: the same image %s is listed twice; both are analysed",
                           path, seen[key], lineno, item)
        elif key not in seen:
            seen[key] = lineno
        imgs.append(item)
    if not imgs:
        raise ParameterError(name, f"{path}: expected image paths one per line, got none")
    return imgs


def check_mask(mask_img, *, name="mask_img", reference=None, reference_name="imgs"):
    """Read a mask: the voxels that are finite and non-zero.

    Parameters
    ----------
    mask_img : str, path-like or nibabel image, 3D
    name : str
        The parameter or flag named in error messages.
    reference : nibabel image, optional
        An image the mask must share its grid with (shape and affine).
    reference_name : str
        How ``reference`` is named when it has no file name.

    Returns
    -------
    mask : (x, y, z) ndarray of bool
    img : nibabel image
        The mask image as read.

    Raises
    ------
    voxstats.errors.ParameterError
        Unreadable, not 3D, or empty (no finite non-zero voxel).
    ValueError
        Not in the space of ``reference`` (both files named).
    """
    img = check_img(mask_img, name=name, ndim=3)
    if reference is not None:
        check_same_space(img, reference, _name(img, name), _name(reference, reference_name))
    values = read_data(img, name=name, dtype=np.float64)
    mask = np.isfinite(values) & (values != 0)
    if not mask.any():
        raise ParameterError(name, f"the mask {_name(img, 'given')} is empty (no voxel finite and non-zero)")
    return mask, img


class _Subjects:
    """Subjects' 3D maps from a 4D image, a list of 3D images, or a list file."""

    def __init__(self, imgs, name):
        self.name = name
        if isinstance(imgs, (str, os.PathLike)) and not is_image_path(imgs):
            imgs = read_image_list(imgs, name=name)
        if isinstance(imgs, (str, os.PathLike)) or hasattr(imgs, "dataobj"):
            img = check_img(imgs, name=name, ndim=4)
            self.four_d = img
            self.items = None
            self.first = SimpleNamespace(shape=img.shape[:3], affine=img.affine,  # header only
                                         get_filename=lambda: _name(img, name))
            self.labels = [f"{_name(img, name)}, volume {i}" for i in range(img.shape[3])]
            return
        if isinstance(imgs, (bytes, np.ndarray)) or not hasattr(imgs, "__iter__"):
            raise TypeError(f"{name}: expected a 4D image, a list of 3D images or their file names, "
                            f"got {type(imgs).__name__}")
        items = list(imgs)
        if not items:
            raise ParameterError(name, "expected at least 2 subjects, got an empty list")
        self.four_d = None
        # every header first (cheap), so a bad file stops the run before any data is read
        checked = [check_img(item, name=f"{name}[{i}]" if not isinstance(item, (str, os.PathLike))
                             else name, ndim=3) for i, item in enumerate(items)]
        self.labels = [_name(item, f"{name}[{i}]") for i, item in enumerate(items)]
        for img, label in zip(checked[1:], self.labels[1:]):
            check_same_space(checked[0], img, self.labels[0], label)
        self.items = checked
        self.first = checked[0]

    def __len__(self):
        return len(self.labels)

    def volumes(self):
        """Yield (label, 3D float32 array), one subject at a time."""
        if self.four_d is not None:
            yield from zip(self.labels, iter_volumes(self.four_d, name=self.name))
            return
        for label, img in zip(self.labels, self.items):
            yield label, read_data(img, name=self.name)


def load(imgs, mask_img=None, *, keep_constant=False, name="imgs", mask_name="mask_img", **surface_options):
    """Read subjects' maps inside a mask as a data matrix and its masker.

    Surface (GIFTI, FreeSurfer) and CIFTI inputs go to
    :func:`voxstats.surface_loading.load_surface_input`, with
    ``surface_options`` (``surf``, ``areas``, ``left_surf``, ``right_surf``,
    ``left_area``, ``right_area``), and come back with their own masker.

    Parameters
    ----------
    imgs : 4D image, list of 3D images, or their file names
        One 3D map per subject: a 4D image (subjects along the 4th axis), a
        list of 3D images or file names, or the name of a text file listing
        3D images (see :func:`read_image_list`). All must share one grid
        (shape and affine); nothing is resampled.
    mask_img : str, path-like or nibabel image, optional
        Analysis mask in the images' space: voxels finite and non-zero. Every
        subject must be finite inside it.
    keep_constant : bool
        Without ``mask_img``: keep voxels that are constant across subjects
        (randomise's ``--norcmask``). Voxels that are not finite in every
        subject are left out either way.
    name, mask_name : str
        How ``imgs`` and ``mask_img`` are named in error messages.

    Returns
    -------
    data : (n_subjects, n_voxels) ndarray of float32
        Subjects' values in the mask, voxels in C order.
    masker : voxstats.masker.VolumeMasker
        Maps the columns back to the images' grid.

    Raises
    ------
    voxstats.errors.ParameterError, ValueError
        A bad file (named), fewer than 2 subjects, images on different grids
        (both named), an empty mask, NaN or infinity inside ``mask_img``.

    Notes
    -----
    Without ``mask_img`` the mask is FSL randomise's default: voxels whose
    value is not the same in every subject, and finite in every subject. Each
    volume is read once; memory stays about the returned matrix (the voxels
    found to vary are kept as they are found; the values of a voxel constant
    up to some subject are those of the first subject).
    """
    from .surface_loading import SURFACE_OPTIONS, input_kind, load_surface_input

    unknown = sorted(set(surface_options) - set(SURFACE_OPTIONS))
    if unknown:
        raise TypeError(f"load() got an unexpected keyword argument '{unknown[0]}'")
    if input_kind(imgs, name=name) != "volume":
        return load_surface_input(imgs, mask_img, keep_constant=keep_constant, name=name, mask_name=mask_name,
                                  **surface_options)
    for option, value in surface_options.items():
        if value is not None:
            raise ParameterError(option, "only for surface (GIFTI, FreeSurfer) or CIFTI inputs")
    subjects = _Subjects(imgs, name)
    if len(subjects) < 2:
        raise ParameterError(name, f"expected at least 2 subjects, got {len(subjects)}")
    affine = np.asarray(subjects.first.affine, dtype=float)
    if mask_img is not None:
        mask, _ = check_mask(mask_img, name=mask_name, reference=subjects.first,
                             reference_name=subjects.labels[0])
        data = _load_in_mask(subjects, mask)
    else:
        data, mask = _load_default_mask(subjects, keep_constant)
        if not mask.any():
            rule = "finite in every subject" if keep_constant else \
                "finite in every subject and not constant across subjects"
            raise ParameterError(name, f"no voxel is {rule}: nothing to analyse")
    return data, VolumeMasker(mask, affine)


def _load_in_mask(subjects, mask):
    data = np.empty((len(subjects), int(mask.sum())), dtype=np.float32)
    for i, (label, volume) in enumerate(subjects.volumes()):
        data[i] = volume[mask]
        if not np.all(np.isfinite(data[i])):
            raise ParameterError(subjects.name, f"{label}: NaN or infinite values inside the mask")
    return data


def _load_default_mask(subjects, keep_constant):
    """One pass over the subjects; memory about the returned matrix.

    ``columns`` lists the candidate voxels (flat C-order indices) in the order
    they were found; subject i's values at the first ``lengths[i]`` of them are
    appended to one flat buffer. A voxel joins when a subject's value differs
    from the first subject's (or at once with ``keep_constant``), so its values
    in earlier subjects equal the first subject's. At the end each row is
    completed, restricted to the voxels finite in every subject, put in C
    order, and moved to its final place in the same buffer (see
    :func:`_compact`), which then becomes the (n_subjects, n_voxels) matrix.
    """
    n = len(subjects)
    buffer = np.empty(0, dtype=np.float32)
    starts, lengths = [], []
    columns = np.zeros(0, dtype=np.int64)
    first = finite = candidate = None
    used = 0
    for i, (_, volume) in enumerate(subjects.volumes()):
        flat = volume.ravel()  # C order, as the mask's voxels are numbered
        if i == 0:
            first = flat.copy()
            finite = np.isfinite(first)
            candidate = np.zeros(first.size, dtype=bool)
            new = finite.copy() if keep_constant else candidate.copy()
        else:
            finite &= np.isfinite(flat)
            new = finite & ~candidate & (flat != first)
        if new.any():
            candidate |= new
            columns = np.concatenate([columns, np.flatnonzero(new)])
        stop = used + columns.size
        if stop > buffer.size:  # grow to what the remaining subjects need if no voxel joins any more
            buffer.resize(max(stop, int(1.01 * (used + (n - i) * columns.size)) + 1024), refcheck=False)
        buffer[used:stop] = flat[columns]
        starts.append(used)
        lengths.append(columns.size)
        used = stop
    keep = finite[columns]
    order = np.argsort(columns, kind="stable")
    select = order[keep[order]]  # positions in `columns` of the final voxels, in C order
    k = select.size
    if n * k > buffer.size:
        buffer.resize(n * k, refcheck=False)
    _compact(buffer, starts, lengths, k, lambda i, row: _complete(row, first, columns, select))
    buffer.resize(n * k, refcheck=False)  # release the rest
    mask = np.zeros(first.size, dtype=bool)
    mask[columns[select]] = True
    return buffer.reshape(n, k), mask.reshape(subjects.first.shape[:3])


def _complete(stored, first, columns, select):
    """A subject's final row from its stored values (the first voxels of ``columns``)."""
    full = np.empty(columns.size, dtype=np.float32)
    full[:stored.size] = stored
    full[stored.size:] = first[columns[stored.size:]]
    return full[select]


def _compact(buffer, starts, lengths, k, final_row):
    """Move row i from ``buffer[starts[i]:starts[i] + lengths[i]]`` to ``buffer[i*k:(i+1)*k]``.

    ``final_row(i, stored)`` gives row i's final values (a new array). With
    lengths non-decreasing, the rows whose final place is not before their
    stored place form a prefix: moving them last-first, then the others
    first-last, never overwrites a row not yet moved.
    """
    n = len(starts)
    ahead = [i for i in range(n) if i * k >= starts[i]]
    m = len(ahead)
    for i in list(range(m - 1, -1, -1)) + list(range(m, n)):
        row = final_row(i, buffer[starts[i]:starts[i] + lengths[i]])
        buffer[i * k:(i + 1) * k] = row
