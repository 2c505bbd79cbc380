"""Cluster normalisation, FSL randomise's ``--twopass``.

Cluster sizes and TFCE values are larger where the data are smoother, so a
single maximum over the brain favours smooth regions. randomise's two-pass
mode normalises them by their own null: the first pass over the permutations
(the unpermuted data included) accumulates, at every voxel, the sum and the
number of non-zero values of the cluster size (``-c``) and of TFCE (``-T``);
their ratio is the voxel's mean over the permutations where it is in a cluster
(TFCE's is then raised to its 2nd percentile over the mask). The second pass
divides each permutation's statistics by these means: a cluster's size by the
mean of the voxel means over the cluster, TFCE voxel by voxel. The maxima of
the normalised statistics give ``clustern`` and ``tfcen`` FWE p-values. t
contrasts only, as in randomise.

Sums are accumulated exactly, so the result does not depend on chunking or
threads: cluster sizes are integers, and TFCE values are rounded to a fixed
quantum (2**k with about 2**-33 of the unpermuted maximum for 5000
permutations, chosen so that the total cannot overflow) before being added as
integers.
"""

import logging
from dataclasses import dataclass

import numpy as np

from . import _engine_numba

logger = logging.getLogger(__name__)

__all__ = ["TwoPass"]

_HEADROOM = 16  # permuted TFCE may exceed the unpermuted maximum by up to 2**16 before clipping


@dataclass(frozen=True)
class TwoPass:
    """Normalisers and normalised statistics of one t contrast. Maps are (n_voxels,).

    Attributes
    ----------
    cluster_sum, cluster_samp, cluster_mean : ndarray or None
        First pass, cluster extent: sum of the cluster sizes at each voxel, the
        number of permutations where it is in a cluster, their ratio (0 where
        never). randomise's ``_clusternorm_tstat1{sum,samp,post}``.
    tfce_sum, tfce_samp, tfce_mean : ndarray or None
        The same for TFCE; ``tfce_mean`` raised to its 2nd percentile over the
        mask. randomise's ``_tfcenorm_tstat1{sum,samp,post}``.
    clustern, clustern_p_fwe, null_max_clustern : ndarray or None
        Normalised cluster size of each voxel's cluster, its FWE p, the null of
        the maximum (``clustern``).
    tfcen, tfcen_p, tfcen_p_fwe, null_max_tfcen : ndarray or None
        Normalised TFCE, uncorrected and FWE p, the null of the maximum (``tfcen``).
    """

    cluster_sum: np.ndarray | None = None
    cluster_samp: np.ndarray | None = None
    cluster_mean: np.ndarray | None = None
    tfce_sum: np.ndarray | None = None
    tfce_samp: np.ndarray | None = None
    tfce_mean: np.ndarray | None = None
    clustern: np.ndarray | None = None
    clustern_p_fwe: np.ndarray | None = None
    null_max_clustern: np.ndarray | None = None
    tfcen: np.ndarray | None = None
    tfcen_p: np.ndarray | None = None
    tfcen_p_fwe: np.ndarray | None = None
    null_max_tfcen: np.ndarray | None = None


def quantum(max_observed, n_perm):
    """The power of two TFCE values are rounded to before their exact (integer) sum."""
    if not max_observed > 0:
        return 1.0
    exponent = np.ceil(np.log2(max_observed)) + _HEADROOM + np.ceil(np.log2(max(n_perm, 2))) - 62
    return float(2.0 ** exponent)


def _labels(job, stats, n_threads):
    from .engine import inclusive_threshold

    labels = np.empty(stats.shape, dtype=np.int64)
    _engine_numba.cluster_label_maps(stats, inclusive_threshold(job.cluster_threshold), job.tests_both_signs,
                                     job.cluster_graph.neighbours, labels, n_threads)
    return labels


def _size_maps(labels):
    """Each voxel's cluster size (0 outside clusters), per row of ``labels``."""
    out = np.zeros(labels.shape, dtype=np.int64)
    for b, row in enumerate(labels):
        sizes = np.bincount(row, minlength=row.size + 1)
        sizes[0] = 0
        out[b] = sizes[row]
    return out


def first_pass(job, stats, tfce, n_threads):
    """The first pass' per-voxel sums of one chunk (integers: exact in any order)."""
    out = {}
    if job.cluster_threshold is not None:
        sizes = _size_maps(_labels(job, stats, n_threads))
        out["extent_size_sum"] = sizes.sum(axis=0)
        out["extent_count"] = np.count_nonzero(sizes, axis=0).astype(np.int64)
    if tfce is not None:
        scaled = np.abs(tfce.astype(np.float64)) / job.twopass_quantum
        limit = 2.0 ** (62 - np.ceil(np.log2(max(tfce.shape[0], 2))))
        if np.any(scaled > limit):
            logger.warning("A permuted TFCE value exceeds the unpermuted maximum by more than 2**%d; "
                           "clipped in the two-pass sums", _HEADROOM)
        out["tfce_qsum"] = np.rint(np.minimum(scaled, limit)).astype(np.int64).sum(axis=0)
        out["tfce_count"] = np.count_nonzero(tfce, axis=0).astype(np.int64)
    return out


def _ratio(num, den):
    """randomise's SD(): num / den, 0 where den is 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(num.shape), where=den != 0)


def fsl_percentile(values, p):
    """newimage's percentile over the mask: the sorted values at ``int(n * p)``."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    if ordered.size == 0:
        return 0.0
    return float(ordered[min(int(np.float32(ordered.size) * np.float32(p)), ordered.size - 1)])


def normalisers(job, merged):
    """From the first pass: the sums, counts and means written by randomise, as a TwoPass."""
    fields = {}
    if merged.extent_size_sum is not None:
        fields.update(cluster_sum=merged.extent_size_sum.astype(np.float64),
                      cluster_samp=merged.extent_count.astype(np.float64),
                      cluster_mean=_ratio(merged.extent_size_sum, merged.extent_count))
    if merged.tfce_qsum is not None:
        total = merged.tfce_qsum.astype(np.float64) * job.twopass_quantum
        mean = _ratio(total, merged.tfce_count)
        mean = np.maximum(mean, fsl_percentile(mean, 0.02))
        fields.update(tfce_sum=total, tfce_samp=merged.tfce_count.astype(np.float64), tfce_mean=mean)
    return TwoPass(**fields)


def normalised(job, stats, tfce, n_threads):
    """(normalised cluster size maps, normalised TFCE maps) of a batch; None where not asked."""
    clustern = tfcen = None
    if job.norm_extent is not None:
        labels = _labels(job, stats, n_threads)
        clustern = np.zeros(stats.shape, dtype=np.float32)  # compared in float32, as randomise
        for b, row in enumerate(labels):
            size = np.bincount(row, minlength=row.size + 1).astype(np.float64)
            total = np.bincount(row, weights=job.norm_extent, minlength=row.size + 1)
            value = _ratio(size * size, total)  # size / (total / size): size over the mean normaliser
            value[0] = 0.0
            clustern[b] = value[row]
    if job.norm_tfce is not None and tfce is not None:
        tfcen = _ratio(tfce, job.norm_tfce[np.newaxis]).astype(np.float32)
    return clustern, tfcen


def result(job, observed, merged, first, n_perm, n_threads):
    """The TwoPass of a contrast: ``first`` (normalisers) completed with the second pass' p-values."""
    from dataclasses import replace

    from .inference import fwe_pvalues, pvalues_from_counts

    tfce = None if observed.tfce is None else observed.tfce[np.newaxis]
    clustern, tfcen = normalised(job, observed.stat[np.newaxis], tfce, n_threads)
    fields = {}
    if clustern is not None:
        fields.update(clustern=clustern[0].astype(np.float64), null_max_clustern=merged.null_max_clustern,
                      clustern_p_fwe=fwe_pvalues(clustern[0], merged.null_max_clustern))
    if tfcen is not None:
        fields.update(tfcen=tfcen[0].astype(np.float64), null_max_tfcen=merged.null_max_tfcen,
                      tfcen_p=pvalues_from_counts(merged.tfcen_counts, n_perm),
                      tfcen_p_fwe=fwe_pvalues(tfcen[0], merged.null_max_tfcen))
    return replace(first, **fields)


def second_pass(job, stats, tfce, observed, n_threads):
    """The second pass' maxima (and TFCE counts) of one chunk."""
    from .engine import _exceedances

    out = {}
    clustern, tfcen = normalised(job, stats, tfce, n_threads)
    if clustern is not None:
        out["null_max_clustern"] = clustern.max(axis=1, initial=0.0).astype(np.float64)
    if tfcen is not None:
        _, observed_tfcen = normalised(job, observed.stat[np.newaxis], observed.tfce[np.newaxis], n_threads)
        out["tfcen_counts"], out["null_max_tfcen"] = _exceedances(job, tfcen, observed_tfcen[0])
    return out
