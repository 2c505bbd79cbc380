"""Study-specific templates by ANTs-style group-wise construction.

:func:`build_template` starts from a template (default nilearn's MNI152 2009a)
and repeats: register every subject to the current template with the chosen
drive, average the subjects' images resampled into it (structural scaled to
the template's median, χ in ppb from voxels with data only), then apply the
**shape update** of ANTs template construction
(``antsMultivariateTemplateConstruction2.sh``; Avants et al. 2010,
NeuroImage 49:2457, doi:10.1016/j.neuroimage.2009.09.062): the average of the
subjects' forward displacement fields ``ū(x)`` (template point ``x`` -> subject
point ``x + u_s(x)`` before the affine) tells how far the template's shape sits
from the cohort's mean shape; the averaged images are resampled at
``x - g ū(x)`` (``g`` the gradient step, ANTs' default 0.25), which moves the
template's anatomy towards the mean. The affine parts are not averaged, so the
template stays in the frame of the starting (MNI) template and atlases of that
space keep their coordinates.
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np

from qsm.drives import HYBRID_MU_PPM, default_nonlinear, support_mask
from qsm.registration import register
from qsm.template import Template, load_template
from qsm.transforms import grid_world, sample, sample_field
from qsm.units import to_ppb

logger = logging.getLogger(__name__)

__all__ = ["build_template"]


def _show(verbose):
    if verbose is None:
        return logger.getEffectiveLevel() <= logging.INFO
    return bool(verbose)


def build_template(cohort, *, n_iterations=3, template=None, space="study", engine="dipy",
                   drive="structural", nonlinear=None, params=None, units="ppb",
                   hybrid_mu=HYBRID_MU_PPM, registration_resolution=None, gradient_step=0.25,
                   rng=None, verbose=None):
    """Iterative group-wise template with the ANTs shape update (see the module notes).

    Parameters
    ----------
    cohort : qsm.cohort.Cohort
    n_iterations : int
        Rounds of register-average-update (>= 1).
    template : Template or None
        Starting template (default: nilearn's bundled MNI152 2009a at 2 mm).
    space : str
        Space name of the result.
    engine, drive, nonlinear, params, hybrid_mu, registration_resolution
        As in :func:`qsm.registration.register`. The drives that need a
        template χ channel ('chi', 'hybrid', 'multichannel') use the
        structural drive in the first round when the starting template has
        none; from the second round on the averaged χ is the χ channel.
    units : {'ppb', 'ppm'}
        Units of the subjects' χ maps; the template's χ channel is in ppb.
    gradient_step : float
        Fraction of the average inverse warp applied per round (0 = plain
        averaging without shape update; ANTs' default 0.25).
    rng : int, numpy.random.Generator or None
    verbose : bool or None

    Returns
    -------
    Template
        ``img`` (structural average, or the starting image reshaped for a
        cohort without structural images), ``chi_img`` (ppb), ``mask_img``
        (the starting mask carried by the shape updates), ``space``.
    """
    from voxstats.progress import progress_bar as tqdm

    if int(n_iterations) < 1:
        raise ValueError(f"Invalid value for the 'n_iterations' parameter: expected an integer "
                         f">= 1, but got {n_iterations!r} instead.")
    if not 0 <= float(gradient_step) <= 1:
        raise ValueError(f"Invalid value for the 'gradient_step' parameter: expected a number "
                         f"in [0, 1], but got {gradient_step!r} instead.")
    current = load_template(resolution=2) if template is None else template
    rng = np.random.default_rng(rng)
    seeds = rng.integers(2**31 - 1, size=(int(n_iterations), len(cohort)))
    world = grid_world(current.shape, current.affine)
    ref_scale = float(np.median(np.asarray(current.img.dataobj)[current.mask()]))
    for it in range(int(n_iterations)):
        this_drive = drive if (drive == "structural" or current.chi_img is not None) \
            else "structural"
        s_sum, s_n = np.zeros(current.shape), 0
        c_sum, c_n = np.zeros(current.shape), np.zeros(current.shape)
        u_sum, u_n = np.zeros(current.shape + (3,)), 0
        for k, row in enumerate(tqdm(list(cohort), desc=f"template iteration {it + 1}",
                                     disable=not _show(verbose))):
            raw = nib.load(row["chi_path"])
            chi = nib.Nifti1Image(to_ppb(raw.dataobj, units), raw.affine)
            struct = (nib.load(row["structural_path"]) if row["structural_path"] is not None
                      else None)
            if struct is None and this_drive != "chi":
                raise ValueError(f"Subject '{row['subject']}': drive={this_drive!r} needs a "
                                 "structural image; use drive='chi' with a χ template.")
            nl = default_nonlinear(this_drive) if nonlinear is None else nonlinear
            reg = register(struct if this_drive != "chi" else None, current, chi_img=chi,
                           drive=this_drive, engine=engine, nonlinear=nl, params=params,
                           hybrid_mu=hybrid_mu, chi_units="ppb", rng=int(seeds[it, k]),
                           resolution=registration_resolution)
            ref = current.img
            if struct is not None:
                s = np.asarray(reg.transform(struct, reference=ref).dataobj, dtype=np.float64)
                med = np.median(s[current.mask()])
                s_sum += s * (ref_scale / med if med > 0 else 1.0)
                s_n += 1
            data = np.asarray(chi.dataobj, dtype=np.float32)
            have = support_mask(data)
            num = np.asarray(reg.transform(nib.Nifti1Image(np.where(have, data, 0), chi.affine),
                                           reference=ref).dataobj, dtype=np.float64)
            den = np.asarray(reg.transform(nib.Nifti1Image(have.astype(np.float32), chi.affine),
                                           reference=ref).dataobj, dtype=np.float64)
            c_sum += num
            c_n += den
            if reg.forward_field is not None:
                u_sum += sample_field(reg.forward_field, reg.template_affine, world)
                u_n += 1
        img = (s_sum / s_n) if s_n else np.asarray(current.img.dataobj, dtype=np.float64)
        chi_avg = np.where(c_n >= 0.5 * len(cohort), c_sum / np.maximum(c_n, 1e-9), 0.0)
        mask = current.mask().astype(np.float32)
        if u_n and gradient_step > 0:
            u_mean = u_sum / u_n
            points = world - float(gradient_step) * u_mean
            img, chi_avg = (sample(v, current.affine, points, order=1) for v in (img, chi_avg))
            mask = sample(mask, current.affine, points, order=0)
            norm = np.linalg.norm(u_mean, axis=-1)[current.mask()]
            logger.info("Template iteration %d: average warp %.2f mm (max %.2f mm) inside the "
                        "mask; shape update with step %g", it + 1, float(norm.mean()),
                        float(norm.max()), gradient_step)
        current = Template(img=nib.Nifti1Image(img.astype(np.float32), current.affine),
                           mask_img=nib.Nifti1Image((mask > 0.5).astype(np.uint8),
                                                    current.affine),
                           space=space,
                           chi_img=nib.Nifti1Image(chi_avg.astype(np.float32), current.affine))
        logger.info("Template iteration %d/%d done", it + 1, n_iterations)
    return current
