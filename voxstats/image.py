"""Image input and output: loading subjects' maps, checking spaces, atomic writes.

Every image that enters the engine goes through :func:`load_imgs` or
:func:`check_img`; nothing is resampled here, ever. A space mismatch is an
error that names both files.
"""

import logging
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "atomic_write_text",
    "check_img",
    "check_same_space",
    "default_mask",
    "load_imgs",
    "save_img_atomic",
]


def _name(img, fallback):
    """A printable name for an image argument: its file name when it has one."""
    if isinstance(img, (str, os.PathLike)):
        return str(img)
    filename = getattr(img, "get_filename", lambda: None)()
    return filename or fallback


def check_img(img, *, name="image", ndim=None):
    """Load ``img`` (a path or a nibabel image) and check its dimensionality.

    Parameters
    ----------
    img : str, path-like or nibabel.spatialimages.SpatialImage
        The image or its file name.
    name : str
        How the image is named in error messages.
    ndim : int or tuple of int, optional
        Accepted numbers of dimensions. A 4D image with one volume counts as 3D.

    Returns
    -------
    img : nibabel.Nifti1Image-like image
    """
    label = _name(img, name)
    if isinstance(img, (str, os.PathLike)):
        path = Path(img)
        if not path.exists():
            raise FileNotFoundError(f"{name}: file not found: {path}")
        try:
            img = nib.load(path)
        except Exception as exc:  # nibabel raises several types for bad files
            raise ValueError(f"{name}: cannot read {path} as an image ({exc})") from None
    elif not hasattr(img, "affine") or not hasattr(img, "shape"):
        raise TypeError(f"{name}: expected a file name or a nibabel image, got {type(img).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        shape = img.shape
        if len(shape) == 4 and shape[3] == 1 and 3 in allowed:
            img = img.slicer[..., 0]
            shape = img.shape
        if len(shape) not in allowed:
            raise ValueError(f"{name}: expected a {' or '.join(f'{d}D' for d in allowed)} image, "
                             f"got shape {shape} in {label}")
    return img


def check_same_space(img_a, img_b, name_a="first image", name_b="second image", *, atol=1e-4):
    """Raise ``ValueError`` unless both images share the 3D grid (shape and affine)."""
    label_a, label_b = _name(img_a, name_a), _name(img_b, name_b)
    shape_a, shape_b = tuple(img_a.shape[:3]), tuple(img_b.shape[:3])
    if shape_a != shape_b:
        raise ValueError(f"{label_a} and {label_b} are not in the same space: "
                         f"shapes {shape_a} and {shape_b}; nothing is resampled silently")
    if not np.allclose(img_a.affine, img_b.affine, atol=atol):
        raise ValueError(f"{label_a} and {label_b} are not in the same space: affines differ "
                         f"({np.round(img_a.affine, 3).tolist()} vs {np.round(img_b.affine, 3).tolist()}); "
                         "nothing is resampled silently")


def load_imgs(imgs, *, dtype=np.float32):
    """Load subjects' 3D maps (a list) or one 4D image into one array.

    Parameters
    ----------
    imgs : list of (str or image), or str or image
        3D images, one per subject, or a single 4D image.
    dtype : numpy dtype
        Data type of the returned array.

    Returns
    -------
    data : (x, y, z, n_subjects) ndarray
    affine : (4, 4) ndarray
    names : list of str
        One name per subject (file names where known).
    """
    if isinstance(imgs, (str, os.PathLike)) or hasattr(imgs, "affine"):
        img = check_img(imgs, name="imgs", ndim=(3, 4))
        label = _name(imgs, "imgs")
        data = np.asarray(img.dataobj, dtype=dtype)
        if data.ndim == 3:
            data = data[..., np.newaxis]
        names = [f"{label}[{i}]" for i in range(data.shape[3])]
        return data, np.asarray(img.affine, dtype=float), names
    imgs = list(imgs)
    if not imgs:
        raise ValueError("imgs: expected at least one image, got an empty list")
    first = check_img(imgs[0], name="imgs[0]", ndim=3)
    data = np.empty(first.shape[:3] + (len(imgs),), dtype=dtype)
    names = []
    for i, item in enumerate(imgs):
        img = first if i == 0 else check_img(item, name=f"imgs[{i}]", ndim=3)
        if i:
            check_same_space(first, img, _name(imgs[0], "imgs[0]"), _name(item, f"imgs[{i}]"))
        data[..., i] = np.asarray(img.dataobj, dtype=dtype)
        names.append(_name(item, f"imgs[{i}]"))
    return data, np.asarray(first.affine, dtype=float), names


def default_mask(data):
    """Voxels finite and non-zero in every subject of a (x, y, z, n) array."""
    return np.all(np.isfinite(data) & (data != 0), axis=-1)


def _atomic_target(path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    path = _atomic_target(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_img_atomic(img, path):
    """Save a nibabel image to ``path`` through a temporary file renamed into place.

    An interrupted write leaves at most a hidden ``.<name>.*.tmp`` file, never a
    truncated image under the final name.
    """
    path = _atomic_target(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
