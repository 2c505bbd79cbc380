"""Units of χ maps: ppb inside qsm, conversion on load, and plausibility checks.

Every QSM toolbox we know (QSMxT, SEPIA, MEDI, STI Suite, the reconstruction
challenges) writes χ in **ppm**; qsm works in **ppb** (1 ppm = 1000 ppb). A
study declares the unit of its maps (``[study] units``); they are converted
once, when read.

A wrong declaration, or one subject in other units, makes every regional
effect 1000 times too small or a single subject dominate the model. Before any
long work, :func:`check_units` looks at each map's *robust brain range*
(99th minus 1st percentile of its voxels with data, in ppb after conversion):

* in vivo brain χ spans roughly 100-600 ppb (white matter about -50, deep
  grey matter up to 200-300 ppb, veins higher); a range outside
  :data:`PLAUSIBLE_RANGE_PPB` = (15, 5000) ppb is implausible for the
  declared unit (a ppm map read as ppb spans ~0.3);
* a range more than :data:`MAX_RATIO_TO_COHORT` = 20 times away from the
  cohort's median range marks a subject in other units than the others.

Each problem is an error counting the subjects and naming the first few with their
files (:class:`qsm.errors.ListedError`; ``qsm`` writes the full list to ``qsm.log``).
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np

from qsm.errors import ListedError

logger = logging.getLogger(__name__)

__all__ = ["UNITS", "PLAUSIBLE_RANGE_PPB", "MAX_RATIO_TO_COHORT", "to_ppb", "robust_range",
           "check_units", "check_unit_ranges"]

UNITS = ("ppb", "ppm")
_FACTOR = {"ppb": 1.0, "ppm": 1000.0}
#: Robust brain range (ppb) accepted as in vivo χ.
PLAUSIBLE_RANGE_PPB = (15.0, 5000.0)
#: Largest accepted ratio between a subject's robust range and the cohort median.
MAX_RATIO_TO_COHORT = 20.0


def _check_units(units):
    if units not in UNITS:
        raise ValueError(f"Invalid value for the 'units' parameter. Allowed values are "
                         f"{', '.join(map(repr, UNITS))}, but got {units!r} instead.")
    return _FACTOR[units]


def to_ppb(data, units):
    """χ values in ppb: ``data * 1000`` for ppm, ``data`` for ppb (float32 copy).

    Zero ("no data") stays zero.
    """
    return np.asarray(data, dtype=np.float32) * np.float32(_check_units(units))


def robust_range(data):
    """99th minus 1st percentile of the finite non-zero voxels (NaN if fewer than 100)."""
    data = np.asarray(data)
    vals = data[np.isfinite(data) & (data != 0)]
    if vals.size < 100:
        return float("nan")
    lo, hi = np.percentile(vals, [1, 99])
    return float(hi - lo)


def check_units(imgs, units, *, subjects=None, reader=None):
    """Refuse maps whose χ range is implausible for the declared unit or far from the cohort's.

    Parameters
    ----------
    imgs : sequence of str, Path or nibabel image
        The χ maps as read (before conversion).
    units : {'ppb', 'ppm'}
        The declared unit.
    subjects : sequence of str or None
        Labels used in messages (default: the file names).
    reader : callable or None
        ``reader(path, subject) -> ndarray`` for paths (e.g. one that turns a
        broken file into a one-line error); default :func:`nibabel.load`.

    Returns
    -------
    ranges : (n,) ndarray
        Robust brain ranges in ppb (after conversion).

    Raises
    ------
    qsm.errors.ListedError
        A ValueError counting the implausible subjects and naming the first
        few with their range, file and the unit that would make them
        plausible; ``error.items`` lists them all.
    """
    factor = _check_units(units)
    names = [str(i) if not hasattr(i, "dataobj") else f"image {k}" for k, i in enumerate(imgs)]
    subjects = names if subjects is None else [str(s) for s in subjects]
    ranges = []
    for img, sub in zip(imgs, subjects):
        if hasattr(img, "dataobj"):
            data = np.asarray(img.dataobj, dtype=np.float32)
        elif reader is not None:
            data = np.asarray(reader(img, sub), dtype=np.float32)
        else:
            data = np.asarray(nib.load(str(img)).dataobj, dtype=np.float32)
        ranges.append(robust_range(data) * factor)
    return check_unit_ranges(ranges, units, subjects=subjects, names=names)


def check_unit_ranges(ranges, units, *, subjects, names):
    """The checks of :func:`check_units` on robust ranges already measured.

    For callers that read each map once for other work too (e.g.
    :func:`qsm.pipeline.run_study`).

    Parameters
    ----------
    ranges : (n,) array_like
        ``robust_range(data) * factor`` of each map as read (ppb; ``factor``
        1000 for ppm, 1 for ppb).
    units : {'ppb', 'ppm'}
        The declared unit.
    subjects, names : sequence of str
        Subject labels and file names used in messages.

    Returns
    -------
    ranges : (n,) ndarray

    Raises
    ------
    qsm.errors.ListedError
        As :func:`check_units`.
    """
    factor = _check_units(units)
    subjects = [str(x) for x in subjects]
    names = [str(x) for x in names]
    ranges = np.asarray(ranges, dtype=float)
    lo, hi = PLAUSIBLE_RANGE_PPB
    bad = []
    for sub, name, r in zip(subjects, names, ranges):
        if np.isfinite(r) and not lo <= r <= hi:
            other = "ppm" if units == "ppb" else "ppb"
            hint = (f" (as {other}: {r * _FACTOR[other] / factor:.3g} ppb)"
                    if lo <= r * _FACTOR[other] / factor <= hi else "")
            bad.append(f"{sub} ({name}): {r:.3g} ppb{hint}")
    if bad:
        raise ListedError(f"χ maps declared in {units} have an implausible robust brain range "
                          f"(1st-99th percentile, expected {lo:g}-{hi:g} ppb) for {len(bad)} of "
                          f"{len(ranges)} subject(s): ", bad,
                          ". Set [study] units (or --units) to the unit of the maps, or convert "
                          "the odd ones.")
    finite = ranges[np.isfinite(ranges)]
    if finite.size >= 3:
        median = float(np.median(finite))
        ratio = ranges / median
        odd = [f"{sub} ({name}): {r:.3g} ppb, {q:.3g} x the cohort median {median:.3g}"
               for sub, name, r, q in zip(subjects, names, ranges, ratio)
               if np.isfinite(q) and not 1 / MAX_RATIO_TO_COHORT <= q <= MAX_RATIO_TO_COHORT]
        if odd:
            raise ListedError(f"χ maps far from the cohort's range (another unit?) for "
                              f"{len(odd)} of {len(ranges)} subject(s): ", odd)
    if finite.size:
        logger.info("χ units %s: robust brain ranges %.3g-%.3g ppb over %d maps", units,
                    float(finite.min()), float(finite.max()), len(ranges))
    return ranges
