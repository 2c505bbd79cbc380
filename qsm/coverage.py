"""Voxels without data: what each subject lacks, per region, and who is too incomplete.

QSM maps lack coverage: zeros outside the reconstructed field of view, masked
veins or artefacts. One rule decides what "no data" is, in both the regional
and the voxel-wise steps of :func:`qsm.pipeline.run_study`
(:func:`has_data`): a voxel has data when it is finite and, with
``[roi] ignore_zeros = true`` (the default, as QSMxT), non-zero.

* The ROI tables average each subject's voxels with data.
* The voxel-wise mask keeps only voxels with data in *every* analysed subject
  (a voxel analysed as 0 ppb in one patient would move the group difference).
* :func:`coverage_table` counts, per subject and region, the voxels without
  data; :func:`incomplete_subjects` names the subjects missing more than
  ``[roi] max_missing_fraction`` of the voxel-wise region, which stop the run
  (``[roi] on_missing = "stop"``) or are left out (``"exclude"``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["COVERAGE_COLUMNS", "has_data", "coverage_table", "incomplete_subjects"]

COVERAGE_COLUMNS = ("subject", "roi", "num_voxels", "num_no_data", "fraction_no_data")


def has_data(data, *, ignore_zeros=True):
    """(x, y, z) bool: finite voxels (and non-zero ones when ``ignore_zeros``)."""
    data = np.asarray(data)
    ok = np.isfinite(data)
    return ok & (data != 0) if ignore_zeros else ok


def coverage_table(subject, data_mask, masks, *, indices=None) -> pd.DataFrame:
    """Voxels without data per region for one subject.

    Parameters
    ----------
    subject : str
    data_mask : (x, y, z) bool ndarray
        :func:`has_data` of the subject's map.
    masks : dict of str to (x, y, z) bool ndarray
        Regions (e.g. :func:`qsm.atlas.region_masks`).
    indices : dict of str to 1D int ndarray, optional
        ``np.flatnonzero`` of each mask, computed once by a caller that
        tabulates many subjects (same result, ~100 times faster than scanning
        the whole volume per region).

    Returns
    -------
    DataFrame
        ``subject, roi, num_voxels, num_no_data, fraction_no_data``.
    """
    rows = []
    flat = np.asarray(data_mask).reshape(-1)
    for name, mask in masks.items():
        where = np.flatnonzero(mask) if indices is None else indices[name]
        n = where.size
        missing = n - np.count_nonzero(flat[where])
        rows.append((subject, name, n, missing, missing / n if n else np.nan))
    return pd.DataFrame(rows, columns=list(COVERAGE_COLUMNS))


def incomplete_subjects(table, region, max_fraction):
    """Subjects whose fraction of ``region`` without data exceeds ``max_fraction``.

    Returns
    -------
    dict of str to float
        Subject -> fraction without data, in table order.
    """
    sel = table[(table["roi"] == region) & (table["fraction_no_data"] > max_fraction)]
    return {str(s): float(f) for s, f in zip(sel["subject"], sel["fraction_no_data"])}
