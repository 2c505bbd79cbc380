"""Re-reference susceptibility (χ) maps to a chosen region.

QSM gives χ up to an additive constant. Before group statistics each map is
shifted so that a reference region has zero mean (or median) χ:

* ``"whole_brain"``: the brain mask;
* ``"csf"``: the ventricles, found in the template as dark (CSF) voxels deep
  inside the brain (brain mask eroded by 12 mm, intensity below half the
  median brain intensity of the T1-like template, connected parts >= 1 ml);
* ``"wm"``: a white-matter mask of the template (:func:`template_wm_mask`:
  nilearn's bundled MNI152 white-matter mask on nilearn's own grids, else the
  brightest tissue class of the T1 template inside its brain mask), eroded
  by one voxel, or the user's own mask;
* ``"mask"``: a user mask on the χ map's grid.

**Voxels without data** (zero or non-finite: outside the reconstructed field of
view, masked veins) are left out of the reference region and keep their "no
data" value (0 stays 0): the offset is the statistic over voxels *with* data
only, so a map gets the same offset whether it is referenced in its own space
or after normalization. The offset is subtracted inside the brain mask, on
voxels with data; voxels outside keep their value. The offset and the region
are returned (and recorded in the sidecars written by :mod:`qsm.normalize`).
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
        Voxels in the reference region used (inside the brain mask, with data).
    n_no_data : int
        Voxels of the brain mask without data (left at their value).
    """

    img: nib.Nifti1Image
    offset: float
    region: str
    statistic: str
    n_voxels: int
    n_no_data: int = 0


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


def template_wm_mask(template_img, brain_mask_img):
    """White-matter mask of a T1 template, eroded once.

    On nilearn's own MNI152 grids this is nilearn's white-matter mask
    (:func:`wm_mask`); on any other template (e.g. ICBM 2009c, FSL's MNI152 or
    a study template) it is the brightest tissue class of the T1 image inside
    the brain mask: voxels above the Otsu threshold of the brain voxels brighter
    than half their median (which leaves CSF out of the split).

    Parameters
    ----------
    template_img, brain_mask_img : nibabel images on one grid

    Returns
    -------
    nibabel.Nifti1Image (uint8)
    """
    _same_grid(template_img, brain_mask_img, "template", "brain mask")
    from nilearn import datasets

    for res in (1, 2):
        nl = datasets.load_mni152_template(resolution=res)
        if (nl.shape == template_img.shape[:3]
                and np.allclose(nl.affine, template_img.affine, atol=1e-3)
                and np.allclose(np.asarray(nl.dataobj), np.asarray(template_img.dataobj),
                                atol=1e-3)):
            return wm_mask(template_img)
    data = np.asarray(template_img.dataobj, dtype=np.float64)
    brain = np.asarray(brain_mask_img.dataobj) > 0
    tissue = data[brain & (data > 0.5 * np.median(data[brain]))]
    hist, edges = np.histogram(tissue, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    threshold = centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)]
    wm = ndi.binary_erosion(brain & (data > threshold))
    if not wm.any():
        raise ValueError("No white matter found in the template (expected a T1-like contrast); "
                         "give your own white-matter mask.")
    return nib.Nifti1Image(wm.astype(np.uint8), template_img.affine)


def rereference(chi_img, *, mask_img, region="whole_brain", region_mask_img=None,
                template_img=None, statistic="mean"):
    """Shift a χ map so that a reference region has zero mean (or median) over voxels with data.

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
        T1-like template on the same grid, needed for ``region='csf'`` and
        used for ``region='wm'`` (:func:`template_wm_mask`).
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
        wm = (wm_mask(chi_img) if template_img is None
              else template_wm_mask(template_img, mask_img))
        ref = np.asarray(wm.dataobj) > 0
    else:
        if template_img is None:
            raise ValueError("region='csf' needs the T1-like 'template_img', got None.")
        _same_grid(chi_img, template_img, "χ map", "template")
        ref = np.asarray(ventricle_mask(template_img, mask_img).dataobj) > 0
    chi = np.asarray(chi_img.dataobj, dtype=np.float32)
    data = np.isfinite(chi) & (chi != 0)
    ref = ref & brain & data
    if not ref.any():
        raise ValueError(f"The reference region {region!r} has no voxel with data inside the "
                         "brain mask.")
    offset = float(np.mean(chi[ref]) if statistic == "mean" else np.median(chi[ref]))
    out = chi.copy()
    out[brain & data] -= offset
    n_no_data = int((brain & ~data).sum())
    logger.info("Re-referenced χ to %s (%s over %d voxels with data; %d brain voxels without "
                "data left as they are): offset %.4g", region, statistic, int(ref.sum()),
                n_no_data, offset)
    return ReferenceResult(img=nib.Nifti1Image(out, chi_img.affine), offset=offset, region=region,
                           statistic=statistic, n_voxels=int(ref.sum()), n_no_data=n_no_data)
