"""A head phantom with a known warp, for validating normalization drives.

:func:`simulate_head` takes the real brain geometry of nilearn's bundled MNI152
2009a template, gives it a tissue-based susceptibility (χ) map (the baseline of
:mod:`qsm.simulate`: white matter down to -25 ppb, cortex +5, CSF 0, thalamus
25-35, basal ganglia 55-150 ppb), and deforms both by a known affine plus a
smooth nonlinear warp (:func:`qsm.transforms.simulate_deformation`). The
result is what a QSM study has per subject (a χ map that is zero outside its
brain mask, a T1-like structural image) together with the truth: for every
subject voxel the template point it shows. The template gets the undeformed χ
as its χ channel (a χ template, as MuSus-100 or a study template provides).

Errors of a registration are measured with :func:`registration_error`.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

from qsm.template import Template, load_template
from qsm.transforms import grid_world, sample, sample_field, simulate_deformation

__all__ = ["SimulatedHead", "simulate_head", "registration_error", "template_chi"]

_UNITS = {"ppb": 1.0, "ppm": 1e-3}


@dataclass(frozen=True)
class SimulatedHead:
    """A deformed head with its truth.

    Attributes
    ----------
    structural_img : nibabel.Nifti1Image
        T1-like image (arbitrary units, ~0-1000) in subject space.
    chi_img : nibabel.Nifti1Image
        χ map in ``units``, zero outside the subject's brain mask.
    template : qsm.template.Template
        The undeformed template with its χ channel (same units).
    subject_to_template : (x, y, z, 3) float32 ndarray
        For each subject voxel, the template world point it shows (mm).
    units : str
    """

    structural_img: nib.Nifti1Image
    chi_img: nib.Nifti1Image
    template: Template
    subject_to_template: np.ndarray
    units: str


def template_chi(template, *, units="ppb"):
    """χ template (tissue baseline of :mod:`qsm.simulate`) on nilearn's 1 or 2 mm grid.

    Parameters
    ----------
    template : Template
        nilearn's bundled template (1 or 2 mm), e.g. ``load_template(resolution=2)``.
    units : {'ppb', 'ppm'}

    Returns
    -------
    nibabel.Nifti1Image (float32)
    """
    from qsm.atlas import demo_thalamus_atlas, region_masks
    from qsm.simulate import _baseline

    if units not in _UNITS:
        raise ValueError(f"Invalid value for the 'units' parameter. Allowed values are 'ppb', "
                         f"'ppm', but got {units!r} instead.")
    resolution = int(round(template.zooms[0]))
    masks = region_masks(demo_thalamus_atlas(resolution=resolution))
    chi, _ = _baseline(template.img, template.mask(), masks)
    return nib.Nifti1Image((chi * _UNITS[units]).astype(np.float32), template.affine)


def simulate_head(*, resolution=2, units="ppb", rotation_deg=(6.0, -5.0, 8.0),
                  translation_mm=(8.0, -6.0, 5.0), scale=(1.05, 0.96, 1.03),
                  max_displacement_mm=5.0, smoothness_mm=12.0, chi_noise_ppb=3.0,
                  structural_noise=0.01, structural="T1w", rng=None):
    """Deform nilearn's MNI152 head (T1 and a χ map) by a known warp.

    Parameters
    ----------
    resolution : {1, 2}
        Grid of nilearn's template (mm).
    units : {'ppb', 'ppm'}
        Units of the χ maps.
    rotation_deg, translation_mm, scale, max_displacement_mm, smoothness_mm
        The deformation (see :func:`qsm.transforms.simulate_deformation`).
    chi_noise_ppb : float
        Standard deviation of white noise added to the subject's χ (ppb).
    structural_noise : float
        Standard deviation of noise on the structural image, as a fraction of its maximum.
    structural : {'T1w', 'magnitude'}
        ``'magnitude'`` gives a T2*-weighted GRE-magnitude-like contrast instead
        of the template's T1 contrast: CSF bright, grey above white matter, and
        iron-rich (positive χ) deep grey matter darkened (``exp(-χ / 100 ppb)``).
    rng : int, numpy.random.Generator or None

    Returns
    -------
    SimulatedHead
    """
    rng = np.random.default_rng(rng)
    base = load_template(resolution=resolution)
    chi_tpl = template_chi(base, units=units)
    template = Template(img=base.img, mask_img=base.mask_img, space=base.space, chi_img=chi_tpl)
    sim = simulate_deformation(base.img, rotation_deg=rotation_deg, translation_mm=translation_mm,
                               scale=scale, max_displacement_mm=max_displacement_mm,
                               smoothness_mm=smoothness_mm, blur_mm=0.0, rng=rng)
    phi = sim.subject_to_template
    brain = sample(base.mask(), base.affine, phi, order=1) > 0.5
    chi = sample(np.asarray(chi_tpl.dataobj), base.affine, phi, order=1)
    chi += rng.normal(0.0, chi_noise_ppb * _UNITS[units], chi.shape)
    chi[~brain] = 0.0
    if structural not in ("T1w", "magnitude"):
        raise ValueError(f"Invalid value for the 'structural' parameter. Allowed values are "
                         f"'T1w', 'magnitude', but got {structural!r} instead.")
    t1 = np.asarray(sim.img.dataobj, dtype=np.float32) * 1000.0
    if structural == "magnitude":
        tissue = np.asarray(sim.img.dataobj, dtype=np.float32)
        chi_ppb = np.clip(chi / _UNITS[units], 0.0, None)
        t1 = 1000.0 * (1.2 - tissue) * np.exp(-chi_ppb / 100.0) * (tissue > 0.05)
    t1 += rng.normal(0.0, structural_noise * t1.max(), t1.shape) * (t1 > 0)
    return SimulatedHead(structural_img=nib.Nifti1Image(t1.astype(np.float32), base.affine),
                         chi_img=nib.Nifti1Image(chi.astype(np.float32), base.affine),
                         template=template, subject_to_template=phi, units=units)


def registration_error(head, registration, *, reference=None):
    """Mean distance (mm) between where a registration and the truth send template points.

    For each voxel of the template brain mask (on ``reference``'s grid, default
    the template grid), the registration's subject point is carried back
    through the true mapping; the error is its distance to the voxel.

    Parameters
    ----------
    head : SimulatedHead
    registration : qsm.registration.Registration or None
        None measures the error before registration (identity).
    reference : Template or None

    Returns
    -------
    float
    """
    tpl = head.template if reference is None else reference
    world = grid_world(tpl.shape, tpl.affine)
    mapped = world if registration is None else registration.to_subject(world)
    back = sample_field(head.subject_to_template, head.structural_img.affine, mapped)
    return float(np.linalg.norm(back - world, axis=-1)[tpl.mask()].mean())
