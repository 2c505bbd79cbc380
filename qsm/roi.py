"""Regional χ statistics: per subject and atlas region, one tidy table per cohort.

Columns follow QSMxT's ``*_qsmstats.tsv``: ``roi, num_voxels, min, max, median,
mean, std`` (plus ``subject`` for a cohort table).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from qsm.atlas import Atlas, _atomic_write_text, atlas_labels_in_space, region_masks

logger = logging.getLogger(__name__)

__all__ = ["STAT_COLUMNS", "region_stats", "cohort_region_stats", "write_stats_table"]

STAT_COLUMNS = ("roi", "num_voxels", "min", "max", "median", "mean", "std")


def _values_stats(values: np.ndarray, *, ignore_zeros: bool, trim_percentile: float | None):
    values = values[np.isfinite(values)]
    if ignore_zeros:
        values = values[values != 0]
    if trim_percentile and values.size:
        lo, hi = np.percentile(values, [trim_percentile, 100.0 - trim_percentile])
        values = values[(values >= lo) & (values <= hi)]
    if values.size == 0:
        return (0,) + (np.nan,) * 5
    return (int(values.size), float(values.min()), float(values.max()),
            float(np.median(values)), float(values.mean()), float(values.std()))


def _check_trim(trim_percentile):
    if trim_percentile is None:
        return None
    trim = float(trim_percentile)
    if not 0.0 <= trim < 50.0:
        raise ValueError(f"Invalid value for the 'trim_percentile' parameter: expected a "
                         f"percentile in [0, 50), but got {trim_percentile!r} instead.")
    return trim


def region_stats(data, masks: dict[str, np.ndarray], *, ignore_zeros: bool = False,
                 trim_percentile: float | None = None) -> pd.DataFrame:
    """χ statistics of one map in each region.

    Parameters
    ----------
    data : (x, y, z) ndarray
        χ map (ppb).
    masks : dict of str to (x, y, z) bool ndarray
        Regions, e.g. from :func:`qsm.atlas.region_masks`.
    ignore_zeros : bool
        Drop voxels equal to 0 (outside the reconstructed field of view).
    trim_percentile : float in [0, 50), optional
        Drop voxels below this percentile and above ``100 - trim_percentile``
        of the region's values (after dropping zeros).

    Returns
    -------
    table : DataFrame
        One row per region, columns ``roi, num_voxels, min, max, median, mean,
        std`` (std with ddof=0; NaN statistics for a region left empty).
    """
    trim = _check_trim(trim_percentile)
    data = np.asarray(data)
    rows = []
    for name, mask in masks.items():
        if mask.shape != data.shape:
            raise ValueError(f"Region {name!r} has shape {mask.shape}, the map {data.shape}.")
        rows.append((name,) + _values_stats(data[mask], ignore_zeros=ignore_zeros,
                                            trim_percentile=trim))
    return pd.DataFrame(rows, columns=list(STAT_COLUMNS))


def cohort_region_stats(imgs: Sequence, atlas: Atlas, *, subjects: Sequence[str] | None = None,
                        regions: Sequence[str] | None = None, resample: bool = False,
                        ignore_zeros: bool = False, trim_percentile: float | None = None,
                        verbose=None) -> pd.DataFrame:
    """χ statistics of every subject in every atlas region, as one tidy table.

    Parameters
    ----------
    imgs : sequence of str, Path or nibabel image
        One 3D χ map per subject.
    atlas : Atlas
    subjects : sequence of str, optional
        Subject labels (default: ``sub-0``, ``sub-1``, ... or file names).
    regions : sequence of str, optional
        Atlas regions (labels and unions); default all.
    resample : bool
        Allow nearest-neighbour resampling of the atlas to a map on another grid;
        otherwise a different grid is an error naming the file.
    ignore_zeros, trim_percentile
        See :func:`region_stats`.
    verbose : bool or None
        Progress bar (default: when logging is at INFO or lower).

    Returns
    -------
    table : DataFrame
        ``subject, roi, num_voxels, min, max, median, mean, std``; one row per
        subject and region.
    """
    from voxstats.progress import progress_bar as tqdm

    imgs = list(imgs)
    if subjects is None:
        subjects = [Path(i).name.split("_")[0] if isinstance(i, (str, Path)) else f"sub-{k}"
                    for k, i in enumerate(imgs)]
    subjects = list(subjects)
    if len(subjects) != len(imgs):
        raise ValueError(f"Got {len(subjects)} subject labels for {len(imgs)} images.")
    if verbose is None:
        verbose = logger.getEffectiveLevel() <= logging.INFO
    tables = []
    cache: dict[tuple, dict] = {}
    for sub, img in tqdm(list(zip(subjects, imgs)), disable=not verbose, desc="ROI statistics"):
        name = str(img) if isinstance(img, (str, Path)) else f"the map of {sub}"
        if isinstance(img, (str, Path)):
            if not Path(img).is_file():
                raise FileNotFoundError(f"χ map {img} (subject {sub}) does not exist.")
            img = nib.load(str(img))
        if img.ndim != 3:
            raise ValueError(f"χ map {name} must be 3D, got shape {img.shape}.")
        key = (img.shape, np.round(img.affine, 4).tobytes())
        if key not in cache:
            labels = atlas_labels_in_space(atlas, img, resample=resample, img_name=name)
            cache[key] = region_masks(atlas, regions=regions, labels_data=labels)
        table = region_stats(np.asarray(img.dataobj, dtype=np.float64), cache[key],
                             ignore_zeros=ignore_zeros, trim_percentile=trim_percentile)
        table.insert(0, "subject", sub)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def write_stats_table(table: pd.DataFrame, path) -> Path:
    """Write a statistics table as TSV (temporary file, then rename)."""
    path = Path(path)
    _atomic_write_text(path, table.to_csv(sep="\t", index=False, na_rep="n/a",
                                          float_format="%.6g"))
    return path
