"""Re-reference susceptibility (χ) maps to a chosen region.

QSM gives χ up to an additive constant. Before group statistics each map is
shifted so that a reference region has zero mean (or median) χ:

* ``"whole_brain"``: the brain mask;
* ``"csf"``: the ventricles, found in the template as dark (CSF) voxels deep
  inside the brain (brain mask eroded by 12 mm, intensity below half the
  median brain intensity of the T1-like template, connected parts >= 1 ml);
* ``"wm"``: nilearn's bundled MNI152 white-matter mask (eroded by one voxel),
  available on the bundled template grids (1 or 2 mm) only;
* ``"mask"``: a user mask on the χ map's grid.

The offset is subtracted inside the brain mask only; voxels outside keep their
value. The offset and the region are returned (and recorded in the sidecars
written by :mod:`qsm.normalize`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

REGIONS = ("whole_brain", "csf", "wm", "mask")
STATISTICS = ("mean", "median")


@dataclass(frozen=True)
class ReferenceResult:
    """A re-referenced χ map.

    Attributes
    ----------
    img : nibabel.Nifti1Image
        χ minus ``offset`` inside the brain mask (float32).
    offset : float
        The region's mean (or median) χ before re-referencing, in the map's units.
    region : str
    statistic : str
    n_voxels : int
        Voxels in the reference region (inside the brain mask, finite).
    """

    img: nib.Nifti1Image
    offset: float
    region: str
    statistic: str
    n_voxels: int


def _check(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"Invalid value for the '{name}' parameter. Allowed values are "
                         f"{', '.join(repr(a) for a in allowed)}, but got {value!r} instead.")


def _same_grid(img_a, img_b, name_a, name_b):
    if img_a.shape[:3] != img_b.shape[:3] or not np.allclose(img_a.affine, img_b.affine, atol=1e-3):
        raise ValueError(f"The {name_a} {img_a.shape[:3]} and the {name_b} {img_b.shape[:3]} are "
                         "not in the same space (shape/affine); resample one of them explicitly.")


def ventricle_mask(template_img, brain_mask_img, *, erosion_mm=12.0, intensity_fraction=0.5,
                   min_volume_ml=1.0):
    """Ventricle (deep CSF) mask from a T1-contrast template.

    Parameters
    ----------
    template_img, brain_mask_img : nibabel images on one grid
    erosion_mm : float
        Distance from the brain surface excluded (sulcal CSF).
    intensity_fraction : float
        CSF = intensity below this fraction of the median brain intensity.
    min_volume_ml : float
        Connected parts smaller than this are dropped.

    Returns
    -------
    nibabel.Nifti1Image (uint8)
    """
    _same_grid(template_img, brain_mask_img, "template", "brain mask")
    data = np.asarray(template_img.dataobj, dtype=np.float32)
    brain = np.asarray(brain_mask_img.dataobj) > 0
    zooms = np.sqrt((np.asarray(template_img.affine)[:3, :3] ** 2).sum(axis=0))
    iterations = max(1, int(round(erosion_mm / zooms.min())))
    inner = ndi.binary_erosion(brain, iterations=iterations)
    csf = inner & (data < intensity_fraction * np.median(data[brain]))
    labels, n = ndi.label(csf)
    if n:
        sizes = ndi.sum(csf, labels, np.arange(1, n + 1)) * np.prod(zooms) / 1000.0
        csf = np.isin(labels, np.flatnonzero(sizes >= min_volume_ml) + 1)
    if not csf.any():
        raise ValueError("No ventricle found in the template (expected dark CSF inside the "
                         "brain of a T1-like template); use region='mask' with your own mask.")
    return nib.Nifti1Image(csf.astype(np.uint8), template_img.affine)


def wm_mask(reference_img):
    """nilearn's MNI152 white-matter mask (eroded once) on ``reference_img``'s grid.

    The grid must be one of nilearn's bundled MNI grids (1 or 2 mm); nothing is resampled.
    """
    from nilearn import datasets

    zoom = float(np.sqrt((np.asarray(reference_img.affine)[:3, 0] ** 2).sum()))
    res = 1 if abs(zoom - 1) < 1e-3 else 2 if abs(zoom - 2) < 1e-3 else None
    if res is None:
        raise ValueError("region='wm' uses nilearn's MNI152 white-matter mask, available on the "
                         "1 or 2 mm MNI grids only; the χ map has a "
                         f"{zoom:g} mm grid. Pass region='mask' with your own mask.")
    wm = datasets.load_mni152_wm_mask(resolution=res)
    _same_grid(reference_img, wm, "χ map", f"nilearn {res} mm MNI152 white-matter mask")
    data = ndi.binary_erosion(np.asarray(wm.dataobj) > 0)
    return nib.Nifti1Image(data.astype(np.uint8), wm.affine)


def rereference(chi_img, *, mask_img, region="whole_brain", region_mask_img=None,
                template_img=None, statistic="mean"):
    """Shift a χ map so that a reference region has zero mean (or median).

    Parameters
    ----------
    chi_img : nibabel image
        3D χ map (normally already in template space).
    mask_img : nibabel image
        Brain mask on the same grid; the offset is subtracted inside it.
    region : {'whole_brain', 'csf', 'wm', 'mask'}
    region_mask_img : nibabel image or None
        The reference region for ``region='mask'``, on the same grid.
    template_img : nibabel image or None
        T1-like template on the same grid, needed for ``region='csf'``.
    statistic : {'mean', 'median'}

    Returns
    -------
    ReferenceResult
    """
    _check("region", region, REGIONS)
    _check("statistic", statistic, STATISTICS)
    _same_grid(chi_img, mask_img, "χ map", "brain mask")
    brain = np.asarray(mask_img.dataobj) > 0
    if region == "whole_brain":
        ref = brain
    elif region == "mask":
        if region_mask_img is None:
            raise ValueError("region='mask' needs 'region_mask_img', got None.")
        _same_grid(chi_img, region_mask_img, "χ map", "reference region mask")
        ref = np.asarray(region_mask_img.dataobj) > 0
    elif region == "wm":
        ref = np.asarray(wm_mask(chi_img).dataobj) > 0
    else:
        if template_img is None:
            raise ValueError("region='csf' needs the T1-like 'template_img', got None.")
        _same_grid(chi_img, template_img, "χ map", "template")
        ref = np.asarray(ventricle_mask(template_img, mask_img).dataobj) > 0
    chi = np.asarray(chi_img.dataobj, dtype=np.float32)
    ref = ref & brain & np.isfinite(chi)
    if not ref.any():
        raise ValueError(f"The reference region {region!r} has no voxel inside the brain mask.")
    offset = float(np.mean(chi[ref]) if statistic == "mean" else np.median(chi[ref]))
    out = chi.copy()
    out[brain] -= offset
    logger.info("Re-referenced χ to %s (%s over %d voxels): offset %.4g",
                region, statistic, int(ref.sum()), offset)
    return ReferenceResult(img=nib.Nifti1Image(out, chi_img.affine), offset=offset, region=region,
                           statistic=statistic, n_voxels=int(ref.sum()))
