"""Image files: reading one NIfTI image safely, checking spaces.

:func:`check_img` is the one checker for an image argument (nilearn's
``check_niimg``): a file name or a nibabel image in, a nibabel image out, and
a one-line error naming the file for anything that cannot be analysed (missing,
unreadable, truncated, complex-valued, with a non-finite affine, of the wrong
dimensionality). It is idempotent: checking a checked image changes nothing.
:func:`read_data` and :func:`iter_volumes` read the voxel values, turning
nibabel's and zlib's many errors (``EOFError`` on a truncated ``.nii.gz``, ...)
into the same kind of one-line error. Nothing is resampled here, ever: a space
mismatch is an error that names both files.

The writers (:func:`save_img_atomic`, :func:`atomic_write_text`) live in
:mod:`voxstats.outputs` and are re-exported here.
"""

import logging
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import MissingFileError, ParameterError
from .outputs import atomic_write_text, save_img_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "atomic_write_text",
    "check_img",
    "check_same_space",
    "iter_volumes",
    "read_data",
    "save_img_atomic",
]


def _name(img, fallback):
    """A printable name for an image argument: its file name when it has one."""
    if isinstance(img, (str, os.PathLike)):
        return str(img)
    filename = getattr(img, "get_filename", lambda: None)()
    return filename or fallback


def _reason(exc):
    """A short reason for a failed read."""
    if isinstance(exc, EOFError):
        return "the file is truncated: the compressed stream ends early"
    if isinstance(exc, zlib.error) or type(exc).__name__ == "BadGzipFile":
        return f"corrupt compressed data: {exc}"
    text = str(exc).replace("\n", " ").strip()
    if "could the file be damaged" in text:
        return f"the file is truncated: {text.split(' - ')[0]}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_img(img, *, name="image", ndim=None):
    """Load ``img`` (a path or a nibabel image) and check that it can be analysed.

    Only the header is read; the voxel values are read by :func:`read_data`
    or :func:`iter_volumes`.

    Parameters
    ----------
    img : str, path-like or nibabel.spatialimages.SpatialImage
        The image or its file name.
    name : str
        The parameter (or command-line flag) named in error messages.
    ndim : int or tuple of int, optional
        Accepted numbers of dimensions. A 4D image with one volume counts as 3D.

    Returns
    -------
    img : nibabel.spatialimages.SpatialImage
        A 4D image with one volume is returned as 3D when only 3D is accepted.

    Raises
    ------
    voxstats.errors.MissingFileError
        The file does not exist.
    voxstats.errors.ParameterError
        The file is not a readable volume image (a folder, an empty or
        truncated file, text), holds complex or RGB values, has a NaN or
        infinite affine, an empty dimension, or the wrong dimensionality.
    TypeError
        ``img`` is neither a file name nor an image.
    """
    label = _name(img, name)
    if isinstance(img, (str, os.PathLike)):
        path = Path(img)
        if not path.exists():
            raise MissingFileError(name, path)
        if path.is_dir():
            raise ParameterError(name, f"{path} is a folder; expected an image file")
        try:
            img = nib.load(path)
        except Exception as exc:  # nibabel raises many types for bad files
            raise ParameterError(name, f"cannot read {path} as an image ({_reason(exc)})") from None
    elif not hasattr(img, "dataobj") or not hasattr(img, "shape"):
        raise TypeError(f"{name}: expected a file name or a nibabel image, got {type(img).__name__}")
    if getattr(img, "affine", None) is None:
        raise ParameterError(name, f"{label} is a {type(img).__name__}, not a volume image "
                             "(NIfTI or ANALYZE with an affine)")
    dtype = _data_dtype(img)
    if dtype.kind == "c":
        raise ParameterError(name, f"{label} holds complex values ({dtype}); expected real values "
                             "(take the magnitude, phase or real part first)")
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise ParameterError(name, f"{label} holds values of type {dtype}; expected real numbers")
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)):
        raise ParameterError(name, f"{label} has a NaN or infinite affine (its sform/qform); "
                             "fix the header before the analysis")
    shape = tuple(img.shape)
    if 0 in shape:
        raise ParameterError(name, f"{label} has an empty dimension (shape {shape})")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if len(shape) == 4 and shape[3] == 1 and 3 in allowed and 4 not in allowed:
            img = img.slicer[..., 0]
            shape = img.shape
        if len(shape) not in allowed:
            raise ParameterError(name, f"expected a {' or '.join(f'{d}D' for d in allowed)} image, "
                                 f"got shape {shape} in {label}")
    return img


def _data_dtype(img):
    getter = getattr(img, "get_data_dtype", None)
    dtype = getter() if getter is not None else getattr(img.dataobj, "dtype", np.dtype(float))
    return np.dtype(dtype)


def read_data(img, *, name="image", dtype=np.float32):
    """The voxel values of a checked image as an array.

    Parameters
    ----------
    img : nibabel image
        As returned by :func:`check_img`.
    name : str
        The parameter named in error messages.
    dtype : numpy dtype

    Raises
    ------
    voxstats.errors.ParameterError
        The data cannot be read (truncated or corrupt file); the message names
        the file.
    """
    try:
        return np.asarray(img.dataobj, dtype=dtype)
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError...
        raise ParameterError(name, f"cannot read the data of {_name(img, name)} ({_reason(exc)})") from None


def _streaming(img):
    """The same image with its file kept open, so that volumes are read in one pass."""
    proxy = img.dataobj
    if not isinstance(proxy, nib.arrayproxy.ArrayProxy) or getattr(proxy, "_keep_file_open", False):
        return img
    try:
        return type(img).from_file_map(img.file_map, keep_file_open=True)
    except Exception:  # an unusual file map: read volume by volume as given
        return img


def iter_volumes(img, *, name="image", dtype=np.float32):
    """Yield the 3D volumes of a checked 4D image one at a time, in order.

    A compressed file is decompressed once, front to back (nibabel keeps the
    file open between volumes), and only one volume is in memory at a time.

    Raises
    ------
    voxstats.errors.ParameterError
        A volume cannot be read; the message names the file and the volume
        (0-based, as ``fslroi``).
    """
    stream = _streaming(img)
    label = _name(img, name)
    for i in range(img.shape[3]):
        try:
            volume = np.asarray(stream.dataobj[..., i], dtype=dtype)
        except Exception as exc:
            raise ParameterError(name, f"cannot read volume {i} of {label} ({_reason(exc)})") from None
        yield volume


def check_same_space(img_a, img_b, name_a="first image", name_b="second image", *, atol=1e-4):
    """Raise ``ValueError`` unless both images share the 3D grid (shape and affine).

    The message names both images (their files when they have one).
    """
    label_a, label_b = _name(img_a, name_a), _name(img_b, name_b)
    shape_a, shape_b = tuple(img_a.shape[:3]), tuple(img_b.shape[:3])
    if shape_a != shape_b:
        raise ValueError(f"{label_a} and {label_b} are not in the same space: "
                         f"shapes {shape_a} and {shape_b}; nothing is resampled silently")
    if not np.allclose(img_a.affine, img_b.affine, atol=atol):
        raise ValueError(f"{label_a} and {label_b} are not in the same space: affines differ "
                         f"({np.round(img_a.affine, 3).tolist()} vs {np.round(img_b.affine, 3).tolist()}); "
                         "nothing is resampled silently")
