"""Read and apply existing spatial transforms (ANTs, ITK, FSL, X5) through nitransforms.

Conventions
-----------
All transforms here are *resampling* transforms, as in ANTs and nitransforms:
they map the world (RAS+ mm) coordinates of a point of the **reference**
(output) grid to the point of the **moving** (input) image to sample there.

A chain is given in the order of ``antsApplyTransforms -t A -t B``, which is
also the order of :class:`nitransforms.manip.TransformChain`: the *first*
listed transform is applied *first* to the reference coordinates. For the
outputs of a registration ``fixed <- moving`` (ANTs ``prefix1Warp.nii.gz`` and
``prefix0GenericAffine.mat``) the chain is ``[warp, affine]``: a reference
point ``x`` goes to ``x + u(x)`` and then to ``A (x + u(x))`` in the moving
image. ``tests/qsm/test_transforms.py`` pins this order.

The module also holds the small I/O helpers shared by ``qsm`` modules
(atomic writes) and the interpolation names accepted everywhere in ``qsm``.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from voxstats.image import atomic_write_text, save_img_atomic  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

#: Interpolation names and the spline order they stand for.
INTERPOLATION_ORDERS = {"nearest": 0, "linear": 1, "cubic": 3, "quintic": 5}

_FORMATS = ("itk", "ants", "fsl", "afni", "lta", "x5")


# ----------------------------------------------------------------------------- I/O helpers
def _tmp_path(path):
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def write_atomic(path, writer):
    """Call ``writer(tmp_path)`` then rename ``tmp_path`` to ``path`` (same suffix kept)."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def check_interpolation(interpolation):
    """Return the spline order for an interpolation name (one-line error otherwise)."""
    if interpolation not in INTERPOLATION_ORDERS:
        allowed = ", ".join(f"'{k}'" for k in INTERPOLATION_ORDERS)
        raise ValueError(
            "Invalid value for the 'interpolation' parameter. Allowed values are "
            f"{allowed}, but got {interpolation!r} instead."
        )
    return INTERPOLATION_ORDERS[interpolation]


# ------------------------------------------------------------------------ point sampling
def grid_world(shape, affine):
    """World coordinates of every voxel centre.

    Returns
    -------
    (x, y, z, 3) float64 ndarray
    """
    aff = np.asarray(affine, dtype=np.float64)
    i, j, k = (np.arange(n, dtype=np.float64) for n in tuple(shape)[:3])
    i, j, k = i[:, None, None], j[None, :, None], k[None, None, :]
    out = np.empty(tuple(shape)[:3] + (3,), np.float64)
    for r in range(3):   # broadcast sums: no (n, 3) index array, no matrix product
        out[..., r] = aff[r, 0] * i + aff[r, 1] * j + aff[r, 2] * k + aff[r, 3]
    return out


def world_to_voxel(points, affine):
    """(..., 3) world points -> (..., 3) continuous voxel indices of a grid with ``affine``."""
    inv = np.linalg.inv(np.asarray(affine, dtype=float))
    return points @ inv[:3, :3].T + inv[:3, 3]


def sample(data, affine, points, *, order=1, cval=0.0, mode="constant"):
    """Sample ``data`` (on a grid with ``affine``) at world ``points`` (..., 3).

    Spline orders above 1 use scipy's prefilter. Returns an array of shape
    ``points.shape[:-1]``.
    """
    vox = world_to_voxel(points, affine)
    flat = vox.reshape(-1, 3).T
    out = ndi.map_coordinates(
        np.asarray(data, dtype=np.float64 if order > 1 else np.float32),
        flat,
        order=order,
        mode=mode,
        cval=cval,
        prefilter=order > 1,
    )
    return out.reshape(points.shape[:-1])


def sample_field(field, affine, points):
    """Linearly interpolate a vector field (x, y, z, 3) at world points (..., 3).

    Outside the field's grid the nearest edge value is used (as ITK does for
    displacement fields once they have decayed to ~0 at the edges).
    """
    vox = world_to_voxel(points, affine).reshape(-1, 3).T
    comps = [
        ndi.map_coordinates(np.asarray(field[..., k], dtype=np.float32), vox, order=1, mode="nearest")
        for k in range(3)
    ]
    return np.stack(comps, axis=-1).reshape(points.shape)


# -------------------------------------------------------------------------- nitransforms
def _check_fmt(fmt):
    if fmt is not None and str(fmt).lower() not in _FORMATS:
        allowed = ", ".join(f"'{f}'" for f in _FORMATS)
        raise ValueError(
            f"Invalid value for the 'fmt' parameter. Allowed values are {allowed}, None, "
            f"but got {fmt!r} instead."
        )
    return None if fmt is None else str(fmt).lower()


def _is_text_4x4(path):
    try:
        rows = [r.split() for r in Path(path).read_text().strip().splitlines() if r.strip()]
        return len(rows) == 4 and all(len(r) == 4 for r in rows) and bool(
            [float(v) for r in rows for v in r]
        )
    except (UnicodeDecodeError, ValueError):
        return False


def load_transform(path, *, fmt=None, reference=None, moving=None):
    """Read one transform file with nitransforms.

    Parameters
    ----------
    path : str or Path
        ``.mat`` (ANTs/ITK binary affine, or an FSL FLIRT 4x4 text matrix),
        ``.txt``/``.tfm`` (ITK text), ``.lta``, ``.h5`` (ITK composite as written
        by ANTs/fMRIPrep, or X5) or ``.nii``/``.nii.gz`` (ITK/ANTs 5D
        displacement field, FSL 4D displacement field).
    fmt : {'itk', 'ants', 'fsl', 'afni', 'lta', 'x5'} or None
        Force a format; ``None`` guesses from the file.
    reference, moving : image or path, optional
        Grids that FSL (and AFNI) matrices are defined against; required for FSL.

    Returns
    -------
    list of nitransforms transforms, in application order.
    """
    import nitransforms as nt
    from nitransforms.manip import TransformChain

    fmt = _check_fmt(fmt)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Transform file '{path}' does not exist.")
    name = path.name.lower()
    if fmt == "ants":
        fmt = "itk"
    if name.endswith((".nii", ".nii.gz")):
        img = nib.load(path)
        if fmt is None:
            fmt = "itk" if img.ndim == 5 else "fsl" if img.ndim == 4 else None
        if fmt not in ("itk", "fsl", "afni"):
            raise ValueError(
                f"Transform file '{path}': expected an ITK/ANTs 5D or FSL 4D displacement "
                f"field, got a {img.ndim}D image."
            )
        return [nt.nonlinear.DenseFieldTransform.from_filename(path, fmt=fmt)]
    if name.endswith(".h5"):
        import h5py

        with h5py.File(path, "r") as f:
            is_x5 = f.attrs.get("Format") in ("X5", b"X5")
        if is_x5 or fmt == "x5":
            return list(TransformChain.from_filename(path, fmt="X5").transforms)
        return list(TransformChain.from_filename(path, fmt="itk").transforms)
    if fmt is None:
        if name.endswith(".lta"):
            fmt = "lta"
        elif _is_text_4x4(path):
            fmt = "fsl"
        else:
            fmt = "itk"
    if fmt in ("fsl", "afni") and (reference is None or moving is None):
        raise ValueError(
            f"Transform file '{path}' is an {fmt.upper()} matrix: pass both 'reference' "
            "and 'moving' images, which it is defined against."
        )
    try:
        xfm = nt.linear.load(path, fmt=fmt, reference=reference, moving=moving)
    except Exception as err:  # nitransforms raises several types
        raise ValueError(f"Transform file '{path}' could not be read as {fmt}: {err}") from err
    return [xfm]


def load_transforms(transforms, *, fmt=None, reference=None, moving=None):
    """Build a :class:`nitransforms.manip.TransformChain` from files and/or transform objects.

    Parameters
    ----------
    transforms : path, transform, (path, invert) tuple, or a sequence of them
        In ``antsApplyTransforms -t`` order: the first is applied first to
        reference points (see the module Notes). ``(path, True)`` inverts a
        linear transform, like ANTs' ``-t [file,1]``.
    fmt, reference, moving
        Passed to :func:`load_transform` for each file.

    Returns
    -------
    nitransforms.manip.TransformChain
    """
    from nitransforms.base import TransformBase
    from nitransforms.manip import TransformChain

    if isinstance(transforms, (str, Path, TransformBase)):
        transforms = [transforms]
    chain = []
    for xfm in transforms:
        if isinstance(xfm, tuple):  # ANTs' "-t [file,1]": use the inverse of a linear file
            if len(xfm) != 2 or not isinstance(xfm[1], bool):
                raise ValueError(f"Expected (path, invert: bool) in 'transforms', got {xfm!r}.")
            loaded = load_transforms([xfm[0]], fmt=fmt, reference=reference, moving=moving)
            if xfm[1]:
                if not all(hasattr(x, "matrix") for x in loaded.transforms):
                    raise ValueError(f"Transform file '{xfm[0]}': only linear transforms "
                                     "can be inverted; pass the inverse warp file instead.")
                chain.extend(~x for x in reversed(loaded.transforms))
            else:
                chain.extend(loaded.transforms)
        elif isinstance(xfm, TransformBase):
            chain.extend(xfm.transforms if isinstance(xfm, TransformChain) else [xfm])
        else:
            chain.extend(load_transform(xfm, fmt=fmt, reference=reference, moving=moving))
    if not chain:
        raise ValueError("Expected at least one transform in 'transforms', got none.")
    if reference is not None:
        for xfm in chain:  # linear transforms read from files carry no grid
            if getattr(xfm, "_reference", None) is None:
                xfm.reference = reference
    return TransformChain(chain)


def apply_transforms(img, transforms, *, reference, interpolation="linear", fmt=None, moving=None):
    """Resample ``img`` onto ``reference`` through a chain of transforms.

    Parameters
    ----------
    img : str, Path or nibabel image
        3D image to resample (a χ map, or a label image with ``interpolation='nearest'``).
    transforms : path, nitransforms transform, or a sequence of them
        In ``antsApplyTransforms -t`` order (first listed = first applied to
        reference points; for ANTs registration outputs ``[warp, affine]``).
    reference : str, Path or nibabel image
        The output grid.
    interpolation : {'nearest', 'linear', 'cubic', 'quintic'}
        Labels must use ``'nearest'``; χ maps ``'linear'`` or a spline.
    fmt, moving
        Passed to :func:`load_transform` (``moving`` defaults to ``img`` for FSL).

    Returns
    -------
    nibabel.Nifti1Image
        float32 (or the input's integer type for ``'nearest'``) image on the reference grid.
    """
    from nitransforms.resampling import apply

    order = check_interpolation(interpolation)
    img = nib.load(img) if isinstance(img, (str, Path)) else img
    reference = nib.load(reference) if isinstance(reference, (str, Path)) else reference
    if len(img.shape) != 3:
        raise ValueError(f"apply_transforms expects a 3D image, got shape {img.shape}.")
    chain = load_transforms(
        transforms, fmt=fmt, reference=reference, moving=img if moving is None else moving
    )
    dtype = img.get_data_dtype() if order == 0 else np.float32
    src = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float64 if order > 1 else np.float32), img.affine)
    logger.info("Resampling a %s image through %d transform(s), %s interpolation",
                img.shape, len(chain), interpolation)
    out = apply(chain, src, reference=reference, order=order, prefilter=order > 1,
                output_dtype=np.float32, max_concurrent=1)
    data = np.asarray(out.dataobj)
    if order == 0 and np.issubdtype(dtype, np.integer):
        data = np.rint(data).astype(dtype)
    return nib.Nifti1Image(data, reference.affine)


# --------------------------------------------------------------------------- validation
@dataclass(frozen=True)
class SimulatedDeformation:
    """A known deformation of an image, for validating registrations.

    Attributes
    ----------
    img : nibabel.Nifti1Image
        The deformed ("subject") image, on the same grid as the input.
    subject_to_template : (x, y, z, 3) float32 ndarray
        For each voxel of ``img``, the world point of the original image that
        it shows (the true inverse of what a registration should recover).
    affine : (4, 4) ndarray
        The affine part (subject world -> template world).
    """

    img: nib.Nifti1Image
    subject_to_template: np.ndarray
    affine: np.ndarray


def rotation_matrix(angles_deg):
    """(3, 3) rotation matrix from rotations (degrees) about x, then y, then z."""
    cx, cy, cz = np.cos(np.deg2rad(angles_deg))
    sx, sy, sz = np.sin(np.deg2rad(angles_deg))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def simulate_deformation(img, *, rotation_deg=(5.0, -4.0, 6.0), translation_mm=(7.0, -6.0, 5.0),
                         scale=(1.05, 0.97, 1.03), max_displacement_mm=5.0, smoothness_mm=12.0,
                         blur_mm=1.0, center_mm=(0.0, -18.0, 18.0), rng=None):
    """Deform an image by a known affine plus a smooth nonlinear warp, then blur it.

    Parameters
    ----------
    img : nibabel image
        3D image (e.g. the bundled MNI template).
    rotation_deg, translation_mm, scale : 3-sequences
        The affine part, about ``center_mm``.
    max_displacement_mm : float
        Peak magnitude (per axis) of the nonlinear displacement.
    smoothness_mm : float
        Gaussian smoothing (sigma, mm) of the random displacement field.
    blur_mm : float
        Gaussian blur (sigma, mm) of the deformed image.
    rng : int, numpy.random.Generator or None

    Returns
    -------
    SimulatedDeformation
    """
    rng = np.random.default_rng(rng)
    shape, aff = img.shape[:3], np.asarray(img.affine, dtype=float)
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    world = grid_world(shape, aff)
    a = np.diag(scale) @ rotation_matrix(rotation_deg)
    c = np.asarray(center_mm, dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = a
    affine[:3, 3] = c + np.asarray(translation_mm) - a @ c
    disp = np.stack(
        [ndi.gaussian_filter(rng.standard_normal(shape), smoothness_mm / zooms) for _ in range(3)],
        axis=-1,
    )
    disp *= max_displacement_mm / np.abs(disp).max()
    phi = world @ affine[:3, :3].T + affine[:3, 3] + disp
    data = sample(np.asarray(img.dataobj), aff, phi, order=1)
    if blur_mm > 0:
        data = ndi.gaussian_filter(data, blur_mm / zooms)
    out = nib.Nifti1Image(data.astype(np.float32), aff)
    return SimulatedDeformation(img=out, subject_to_template=phi.astype(np.float32), affine=affine)
