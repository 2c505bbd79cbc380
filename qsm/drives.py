"""What drives a registration: the contrasts of the subject and template sides, per drive.

Drives (:data:`DRIVES`)
-----------------------
``"structural"``
    The subject's T1w (or magnitude) image against the template's T1 image.
``"chi"``
    The χ map alone against the template's χ channel: for cohorts with no
    usable structural image. The initial alignment matches the centres of the
    *brain masks* (the map's non-zero support and the template mask), never
    of signed χ, whose centre of mass can lie far outside the head; the
    rigid/affine stages first match smoothed masks, then χ.
``"hybrid"``
    The published hybrid contrast used to build χ atlases (MuSus-100, He et al.
    2023, doi:10.1016/j.neuroimage.2023.119950; SEPIA's hybrid template,
    Chan & Marques 2021, doi:10.1016/j.neuroimage.2020.117611):
    ``T1w`` scaled to [0, 255] after clipping at its 0.5th and 99.5th
    percentiles (inside the image's support), minus ``mu * χ`` with
    ``mu = 400`` per ppm (χ in ppm; 0.4 per ppb). Iron-rich deep grey matter
    darkens, which outlines the thalamus and basal ganglia better than T1w
    alone. Both sides (subject and template) get the same contrast, so the
    template needs a χ channel.
``"multichannel"``
    Structural and χ as two channels of one registration: affine stages on
    the structural pair, then SyN with the summed local cross-correlations of
    both channels (as the MULTI templates of Hanspach et al. 2017, JMRI
    46:1474, doi:10.1002/jmri.25671). Needs a template χ channel.

Defaults per drive (:data:`DRIVE_DEFAULTS`) and the absolute quality floors
(:data:`QC_FLOORS`) were chosen from the measurements of
``bench/bench_normalize.py`` on a head phantom (nilearn's MNI152 with a known
affine + nonlinear warp); see ``bench/README.md``.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

__all__ = ["DRIVES", "DRIVE_DEFAULTS", "HYBRID_MU_PPM", "MAGNITUDE_SUFFIXES", "QC_FLOORS",
           "default_nonlinear", "driving_images", "hybrid_contrast", "support_mask"]

DRIVES = ("structural", "chi", "hybrid", "multichannel")
#: μ of the hybrid contrast, per ppm of χ (MuSus-100 / SEPIA).
HYBRID_MU_PPM = 400.0
_PPM = {"ppm": 1.0, "ppb": 1e-3}

#: Per-drive defaults: ``nonlinear`` (SyN after the affine stages). Measured on the
#: head phantom (bench/bench_normalize.py, dipy): SyN lowered the error of every drive
#: (structural T1w 1.3 -> 0.4 mm, χ 1.4 -> 0.5, hybrid 1.3 -> 0.7, multichannel
#: 1.3 -> 0.8) except a GRE magnitude image against a T1 template, where SyN's local
#: correlation pulled it 9.4 mm off (affine only: 1.5 mm): see :func:`default_nonlinear`.
DRIVE_DEFAULTS = {
    "structural": {"nonlinear": True},
    "chi": {"nonlinear": True},
    "hybrid": {"nonlinear": True},
    "multichannel": {"nonlinear": True},
}
#: File-name suffixes of GRE magnitude images (BIDS ``magnitude``/``part-mag``, QSMxT ``MEGRE``).
MAGNITUDE_SUFFIXES = ("magnitude", "mag", "MEGRE", "GRE", "T2starw")

#: Absolute floors of |r|, the normalized image's correlation with the template (inside
#: the template mask), per drive: below them a registration has failed, whatever the rest
#: of the cohort looks like (the robust z-scores only catch relative outliers). Measured on
#: the head phantom: good registrations r = 0.92 (T1w), -0.86 (GRE magnitude, inverted
#: contrast: hence |r|), 0.96 (χ); left 15 mm off 0.01-0.32; 50 mm and 30 deg off 0.06-0.13.
#: The structural floor applies to the structural image (all drives but 'chi'); the χ
#: floor to χ against the template's χ channel (the 'chi' drive).
QC_FLOORS = {"structural": 0.5, "chi": 0.35, "hybrid": 0.5, "multichannel": 0.5}


def default_nonlinear(drive, structural_contrast=None):
    """Whether SyN follows the affine stages by default.

    Parameters
    ----------
    drive : str
    structural_contrast : str or None
        The structural image's suffix (``'T1w'``, ``'magnitude'``, ``'MEGRE'``, ...).

    Returns
    -------
    bool
        False for the structural drive with a GRE magnitude image (its contrast
        differs from the T1 template's), else :data:`DRIVE_DEFAULTS`.
    """
    _check("drive", drive, DRIVES)
    if drive == "structural" and structural_contrast in MAGNITUDE_SUFFIXES:
        return False
    return DRIVE_DEFAULTS[drive]["nonlinear"]


def _check(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"Invalid value for the '{name}' parameter. Allowed values are "
                         f"{', '.join(repr(a) for a in allowed)}, but got {value!r} instead.")


def support_mask(data):
    """Voxels with data: finite and non-zero (QSM maps are zero outside their mask)."""
    data = np.asarray(data)
    return np.isfinite(data) & (data != 0)


def hybrid_contrast(t1, chi, *, mu=HYBRID_MU_PPM, chi_units="ppb", mask=None):
    """The MuSus-100 / SEPIA hybrid contrast ``T1w[0, 255] - mu * χ[ppm]``.

    Parameters
    ----------
    t1 : (x, y, z) ndarray
        T1-weighted (or T1-like) image.
    chi : (x, y, z) ndarray
        χ map on the same grid.
    mu : float
        Weight of χ per ppm (default 400).
    chi_units : {'ppb', 'ppm'}
        Units of ``chi``.
    mask : (x, y, z) bool ndarray or None
        Where the percentiles are taken and the contrast is defined; default
        the T1 image's non-zero voxels. Outside it the result is 0.

    Returns
    -------
    (x, y, z) float32 ndarray
    """
    _check("chi_units", chi_units, tuple(_PPM))
    t1 = np.asarray(t1, dtype=np.float64)
    chi = np.nan_to_num(np.asarray(chi, dtype=np.float64))
    if t1.shape != chi.shape:
        raise ValueError(f"The T1 image {t1.shape} and the χ map {chi.shape} must share a grid.")
    mask = support_mask(t1) if mask is None else np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("The hybrid contrast needs a non-empty mask (or non-zero T1 voxels).")
    lo, hi = np.percentile(t1[mask], [0.5, 99.5])
    scaled = np.clip((t1 - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0) * 255.0
    out = scaled - mu * chi * _PPM[chi_units]
    out[~mask] = 0.0
    return out.astype(np.float32)


def _mask_image(data, affine, smooth_vox=1.0):
    m = ndi.gaussian_filter(support_mask(data).astype(np.float32), smooth_vox)
    return nib.Nifti1Image(m, affine)


def driving_images(drive, *, structural_img=None, chi_img=None, template, hybrid_mu=HYBRID_MU_PPM,
                   chi_units="ppb"):
    """The images a registration matches, for one drive.

    Parameters
    ----------
    drive : {'structural', 'chi', 'hybrid', 'multichannel'}
    structural_img, chi_img : nibabel images or None
        The subject's images (same grid); which are needed depends on the drive.
    template : qsm.template.Template
        Its ``chi_img`` is needed for every drive but ``'structural'``.
    hybrid_mu : float
        μ of the hybrid contrast, per ppm.
    chi_units : {'ppb', 'ppm'}
        Units of both χ maps (subject and template).

    Returns
    -------
    dict
        ``moving``, ``static`` (images for the main stages), ``moving_init``,
        ``static_init`` (weights whose centres of mass give the initial
        translation), ``moving_affine_stage``/``static_affine_stage`` (images of
        a first, mask-based affine pass, or None) and ``moving2``/``static2``
        (the second channel for ``'multichannel'``, or None).

    Raises
    ------
    ValueError
        A missing image or a template without the χ channel the drive needs.
    """
    _check("drive", drive, DRIVES)
    need_struct = drive != "chi"
    need_chi = drive != "structural"
    if need_struct and structural_img is None:
        raise ValueError(f"drive={drive!r} needs the subject's structural image, got None.")
    if need_chi and chi_img is None:
        raise ValueError(f"drive={drive!r} needs the subject's χ map ('chi_img'), got None.")
    if need_chi and template.chi_img is None:
        raise ValueError(f"drive={drive!r} needs a template with a χ channel (template.chi_img): "
                         "give one (--template-chi) or build a study template "
                         "(--build-template); or use drive='structural'.")
    s = None if structural_img is None else np.asarray(structural_img.dataobj, np.float32)
    c = None if chi_img is None else np.nan_to_num(np.asarray(chi_img.dataobj, np.float32))
    t1 = np.asarray(template.img.dataobj, np.float32)
    tc = None if template.chi_img is None else np.asarray(template.chi_img.dataobj, np.float32)
    t_aff = template.affine
    out = {"moving_affine_stage": None, "static_affine_stage": None, "moving2": None,
           "static2": None}
    if drive == "chi":
        aff = chi_img.affine
        brain = template.mask()
        out.update(moving=nib.Nifti1Image(c, aff), static=nib.Nifti1Image(tc * brain, t_aff),
                   moving_init=nib.Nifti1Image(support_mask(c).astype(np.float32), aff),
                   static_init=nib.Nifti1Image(brain.astype(np.float32), t_aff),
                   moving_affine_stage=_mask_image(c, aff),
                   static_affine_stage=_mask_image(brain, t_aff))
        return out
    aff = structural_img.affine
    if drive == "hybrid":
        moving = hybrid_contrast(s, c, mu=hybrid_mu, chi_units=chi_units)
        static = hybrid_contrast(t1, tc, mu=hybrid_mu, chi_units=chi_units,
                                 mask=template.mask())
        out.update(moving=nib.Nifti1Image(moving, aff), static=nib.Nifti1Image(static, t_aff))
    else:
        out.update(moving=nib.Nifti1Image(s, aff), static=nib.Nifti1Image(t1, t_aff))
    if drive == "multichannel":
        out.update(moving2=nib.Nifti1Image(c, chi_img.affine), static2=nib.Nifti1Image(tc, t_aff))
    out.update(moving_init=nib.Nifti1Image(np.abs(s), aff),
               static_init=nib.Nifti1Image(np.abs(t1), t_aff))
    return out
