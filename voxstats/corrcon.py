"""FWE correction across contrasts (PALM ``-corrcon``).

The maximum over all contrasts of each rearrangement's maximum forms one null
distribution per kind of statistic (voxel, TFCE, cluster extent, cluster
mass); each contrast's observed values are compared with it. The maps must be
on one scale: the engine computes them as z when the contrasts would
otherwise differ in kind or rank (PALM then adds ``-zstat`` itself), and v and
G are always z. The identity rearrangement is in the null, so
``1/N <= p <= 1`` and each p is at least the contrast's own FWE p.

Reference: Winkler AM, Webster MA, Brooks JC, Tracey I, Smith SM, Nichols TE
(2016). Non-parametric combination and related permutation tests for
neuroimaging. Hum Brain Mapp 37:1486-1511, doi:10.1002/hbm.23115 (correction
over contrasts, "multiple testing" section).
"""

import logging
from dataclasses import replace

import numpy as np

from .inference import fwe_pvalues

logger = logging.getLogger(__name__)

__all__ = ["correct_across_contrasts", "same_scale"]


def same_scale(contrasts):
    """True when the statistics of ``contrasts`` share one scale without z conversion.

    That is, all are t contrasts, or all are F contrasts of one rank (one
    design, so one residual df).
    """
    kinds = {c.kind for c in contrasts}
    if kinds == {"t"}:
        return True
    return kinds == {"F"} and len({c.rank for c in contrasts}) == 1


def _combined(results, field):
    nulls = [getattr(r, field) for r in results]
    if any(n is None for n in nulls):
        return None
    return np.max(np.vstack(nulls), axis=0)


def _cluster_p(result, labels, observed, null, mass):
    """Across-contrast FWE p of each voxel's cluster (1 outside clusters)."""
    if labels is None or null is None:
        return None
    values = np.abs(observed) if mass else np.ones(observed.size)
    sizes = np.bincount(labels, weights=values, minlength=int(labels.max()) + 1)
    p = np.ones(sizes.size)
    p[1:] = fwe_pvalues(sizes[1:], null)
    return p[labels]


def correct_across_contrasts(results, observed):
    """Add the across-contrast FWE p-values to each contrast's result.

    Parameters
    ----------
    results : sequence of voxstats.randomise.ContrastResult
        One per contrast, from one schedule of rearrangements.
    observed : sequence of (tests_both_signs, voxstats.engine.Observed)
        The engine's unpermuted maps of each contrast (those its null was
        compared with).

    Returns
    -------
    tuple of ContrastResult
        With ``p_cfwe`` (and ``tfce_p_cfwe``, ``cluster_extent_p_cfwe``,
        ``cluster_mass_p_cfwe`` where computed) set.
    null : dict
        The combined nulls: 'stat', 'tfce', 'extent', 'mass' (None where not computed).
    """
    null = {"stat": _combined(results, "null_max"), "tfce": _combined(results, "null_max_tfce"),
            "extent": _combined(results, "null_max_extent"), "mass": _combined(results, "null_max_mass")}
    out = []
    for result, (both, obs) in zip(results, observed, strict=True):
        stat = np.asarray(obs.stat, dtype=np.float64)
        fields = {"p_cfwe": fwe_pvalues(np.abs(stat) if both else stat, null["stat"])}
        if obs.tfce is not None and null["tfce"] is not None:
            tfce = np.asarray(obs.tfce, dtype=np.float64)
            fields["tfce_p_cfwe"] = fwe_pvalues(np.abs(tfce) if both else tfce, null["tfce"])
        mass_labels = getattr(result, "cluster_mass_labels", None)
        fields["cluster_extent_p_cfwe"] = _cluster_p(result, result.cluster_labels, stat, null["extent"], False)
        fields["cluster_mass_p_cfwe"] = _cluster_p(
            result, result.cluster_labels if mass_labels is None else mass_labels, stat, null["mass"], True)
        out.append(replace(result, **fields))
    return tuple(out), null
