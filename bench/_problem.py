"""The benchmark problem shared by the scripts in ``bench/``.

nilearn's bundled MNI152 (2009a) brain mask, ``n`` synthetic smooth noise maps
with a planted group effect, the design ``1 + group + age + sex`` and one t
contrast on ``group``. Everything is built from a seed; nothing is downloaded.
"""

import logging

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

#: Centre of the planted effect, MNI mm (left thalamus, as in the founding study).
EFFECT_CENTER_MM = (-12.0, -18.0, 8.0)
#: FWHM of the planted effect's Gaussian profile, mm.
EFFECT_FWHM_MM = 16.0
#: Age slope added everywhere, noise SDs per year, so that the nuisance matters.
AGE_SLOPE = 0.01
_FWHM_TO_SIGMA = 1.0 / np.sqrt(8.0 * np.log(2.0))
_CHUNK = 16


def _check_rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(
        "Invalid value for the 'rng' parameter. Expected an int, None or a "
        f"numpy.random.Generator, but got {type(rng).__name__} instead."
    )


def _load_mask(resolution):
    if resolution not in (1, 2):
        raise ValueError(
            "Invalid value for the 'resolution' parameter. Allowed values are "
            f"1, 2, but got {resolution!r} instead."
        )
    from nilearn.datasets import load_mni152_brain_mask

    img = load_mni152_brain_mask(resolution=resolution)
    return np.asarray(img.get_fdata() > 0), np.asarray(img.affine, dtype=float)


def _crop(mask, affine, center_vox, box):
    """Keep a cube of half-width ``box`` voxels around ``center_vox``."""
    lo = np.maximum(np.asarray(center_vox) - box, 0)
    hi = np.minimum(np.asarray(center_vox) + box + 1, mask.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    new_affine = affine.copy()
    new_affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return mask[sl].copy(), new_affine


def make_problem(
    n_subjects=240,
    *,
    resolution=2,
    effect=0.5,
    smoothness_mm=6.0,
    box=None,
    rng=0,
):
    """Build the benchmark problem.

    Parameters
    ----------
    n_subjects : int, default 240
        Number of maps; half are in group 1 (``n_subjects // 2``).
    resolution : {1, 2}, default 2
        Resolution of nilearn's MNI152 brain mask, mm (2 mm: 235,375 voxels).
    effect : float, default 0.5
        Group difference at the centre of the planted effect, in units of the
        noise standard deviation (a Cohen's d).
    smoothness_mm : float, default 6.0
        FWHM of the Gaussian kernel that smooths the white noise, mm. The
        smoothed noise is rescaled to unit variance. 0 means no smoothing.
    box : int or None, default None
        If given, crop the mask to a cube of half-width ``box`` voxels around
        the effect (for tiny test problems).
    rng : int, None or numpy.random.Generator, default 0
        Seed of everything random.

    Returns
    -------
    problem : dict
        ``data`` : (n_subjects, n_voxels) float32 ndarray, the maps in the mask.
        ``mask`` : (X, Y, Z) bool ndarray.
        ``affine`` : (4, 4) float ndarray.
        ``design`` : (n_subjects, 4) float64 ndarray, columns intercept,
        group (0/1), age (years, 20-60), sex (0/1).
        ``contrast`` : (4,) float64 ndarray, ``[0, 1, 0, 0]``.
        ``effect_map`` : (n_voxels,) float32 ndarray, the planted profile
        (1 at the centre) in the mask.
        ``effect_center`` : (3,) int ndarray, voxel index of the centre.
    """
    if int(n_subjects) != n_subjects or n_subjects < 6:
        raise ValueError(
            "Invalid value for the 'n_subjects' parameter. Expected an integer "
            f">= 6, but got {n_subjects!r} instead."
        )
    if smoothness_mm < 0:
        raise ValueError(
            "Invalid value for the 'smoothness_mm' parameter. Expected a "
            f"non-negative FWHM in mm, but got {smoothness_mm!r} instead."
        )
    n_subjects = int(n_subjects)
    rng = _check_rng(rng)
    mask, affine = _load_mask(resolution)
    vox_mm = float(abs(affine[0, 0]))
    center = np.rint(
        np.linalg.solve(affine, np.r_[EFFECT_CENTER_MM, 1.0])[:3]
    ).astype(int)
    if box is not None:
        mask, affine = _crop(mask, affine, center, int(box))
        center = np.rint(
            np.linalg.solve(affine, np.r_[EFFECT_CENTER_MM, 1.0])[:3]
        ).astype(int)

    # design: 1 + group + age + sex
    group = np.zeros(n_subjects)
    group[n_subjects // 2:] = 1.0
    age = rng.uniform(20.0, 60.0, n_subjects)
    sex = (rng.random(n_subjects) < 0.5).astype(float)
    design = np.column_stack([np.ones(n_subjects), group, age, sex])
    contrast = np.array([0.0, 1.0, 0.0, 0.0])

    # planted effect: a Gaussian blob at the centre
    grid = np.indices(mask.shape, dtype=np.float32)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, center)) * vox_mm**2
    sig_e = EFFECT_FWHM_MM * _FWHM_TO_SIGMA
    effect_map = np.exp(-0.5 * d2 / sig_e**2).astype(np.float32)[mask]
    del grid, d2

    # smooth noise, generated only in the mask's bounding box (plus a margin)
    sigma = smoothness_mm * _FWHM_TO_SIGMA / vox_mm
    margin = int(np.ceil(3.0 * sigma)) + 1
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    sub = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub_mask = mask[sub]
    if sigma > 0:
        delta = np.zeros((2 * margin + 1,) * 3, dtype=np.float64)
        delta[(margin,) * 3] = 1.0
        kernel = ndimage.gaussian_filter(delta, sigma, truncate=3.0)
        scale = np.float32(1.0 / np.sqrt(np.sum(kernel**2)))
    data = np.empty((n_subjects, int(mask.sum())), dtype=np.float32)
    shape = tuple(int(b - a) for a, b in zip(lo, hi))
    for start in range(0, n_subjects, _CHUNK):
        stop = min(start + _CHUNK, n_subjects)
        noise = rng.standard_normal((stop - start,) + shape, dtype=np.float32)
        if sigma > 0:
            noise = ndimage.gaussian_filter(
                noise, (0.0, sigma, sigma, sigma), truncate=3.0, mode="constant"
            )
            noise *= scale
        data[start:stop] = noise[:, sub_mask]
    data += (effect * group)[:, None].astype(np.float32) * effect_map[None, :]
    data += (AGE_SLOPE * (age - age.mean()))[:, None].astype(np.float32)
    logger.info(
        "Problem: %d subjects, %d voxels, smoothness %.1f mm, effect %.2f",
        n_subjects, data.shape[1], smoothness_mm, effect,
    )
    return dict(
        data=data,
        mask=mask,
        affine=affine,
        design=design,
        contrast=contrast,
        effect_map=effect_map,
        effect_center=center,
    )
