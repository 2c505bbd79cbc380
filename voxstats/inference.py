"""p-values from a permutation null: uncorrected, FWE (max statistic), FDR, clusters.

Counting follows FSL randomise: the null includes the unpermuted data, and
``p = #{null >= observed} / N``, so ``1/N <= p <= 1``.
"""

import logging

import numpy as np
from scipy import stats as sstats
from scipy.sparse import csgraph, csr_matrix

logger = logging.getLogger(__name__)

__all__ = ["cluster_labels", "fdr_bh", "fwe_pvalues", "pvalues_from_counts", "tail_fwe_pvalues"]


def pvalues_from_counts(counts, n_perm):
    """Uncorrected p from exceedance counts (the identity included in both)."""
    return np.asarray(counts, dtype=np.float64) / n_perm


def fwe_pvalues(observed, null_max):
    """FWE-corrected p: the share of null maxima >= each observed value.

    Parameters
    ----------
    observed : ndarray
        Observed values (already made absolute for two-sided tests).
    null_max : (n_perm,) ndarray
        Maximum over voxels of each rearrangement, identity included.
    """
    sorted_max = np.sort(np.asarray(null_max, dtype=np.float64))
    n_below = np.searchsorted(sorted_max, np.asarray(observed, dtype=np.float64), side="left")
    return (sorted_max.size - n_below) / sorted_max.size


def fdr_bh(p):
    """Benjamini-Hochberg adjusted p-values (q-values) of a vector of p-values."""
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    if n == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order] * n / np.arange(1, n + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def tail_fwe_pvalues(observed, null_max, *, tail_fraction=0.1):
    """FWE p-values approximated by a generalised Pareto fit to the null's tail.

    For observed values beyond the ``1 - tail_fraction`` quantile of the null
    maxima, ``p = tail_fraction * GPD.sf(observed - threshold)`` with the GPD
    fitted to the exceedances (as PALM's tail approximation, Winkler et al.
    2016, NeuroImage 141:502). Below the threshold the permutation p is kept.
    The result is an approximation and is reported separately.
    """
    null_max = np.asarray(null_max, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    p = fwe_pvalues(observed, null_max)
    threshold = np.quantile(null_max, 1 - tail_fraction)
    exceed = null_max[null_max > threshold] - threshold
    if exceed.size < 10 or np.ptp(exceed) == 0:
        logger.warning("Too few distinct null maxima (%d) in the tail for a GPD fit; "
                       "returning permutation p-values", exceed.size)
        return p
    shape, _, scale = sstats.genpareto.fit(exceed, floc=0.0)
    beyond = observed > threshold
    share = exceed.size / null_max.size
    p[beyond] = share * sstats.genpareto.sf(observed[beyond] - threshold, shape, loc=0.0, scale=scale)
    return np.clip(p, np.finfo(float).tiny, 1.0)


def cluster_labels(values, threshold, graph, *, two_sided=True, weights=None):
    """Clusters of voxels above ``threshold`` (or below ``-threshold``).

    ``weights`` (n_voxels,), default ``graph.weights``: extent weight of each
    voxel or vertex (e.g. vertex areas in mm^2); extent and mass are then the
    sums of the weights and of weight * |value|.

    Returns
    -------
    labels : (n_voxels,) ndarray of int
        0 outside clusters, 1..n inside (positive and negative clusters apart).
    extent : (n + 1,) ndarray
        Number of voxels of each cluster, or the sum of their weights (entry 0 unused).
    mass : (n + 1,) ndarray
        Sum of |value| (weight * |value| when weighted) over each cluster.
    """
    values = np.asarray(values, dtype=np.float64)
    labels = np.zeros(values.size, dtype=np.int64)
    n_total = 0
    adjacency = csr_matrix((np.ones(graph.indices.size), graph.indices, graph.indptr),
                           shape=(graph.n_voxels, graph.n_voxels))
    for sign in ((1, -1) if two_sided else (1,)):
        nodes = np.flatnonzero(sign * values > threshold)
        if nodes.size == 0:
            continue
        n, lab = csgraph.connected_components(adjacency[nodes][:, nodes], directed=False)
        labels[nodes] = lab + 1 + n_total
        n_total += n
    weights = getattr(graph, "weights", None) if weights is None else weights
    extent = np.bincount(labels, weights=weights, minlength=n_total + 1).astype(np.float64)
    weighted_abs = np.abs(values) if weights is None else np.asarray(weights, dtype=np.float64) * np.abs(values)
    mass = np.bincount(labels, weights=weighted_abs, minlength=n_total + 1)
    extent[0] = mass[0] = 0
    return labels, extent, mass
