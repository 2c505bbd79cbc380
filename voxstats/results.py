"""The results of a permutation analysis, and how the engine's null becomes p-values.

p-values count the unpermuted data in the null, as FSL randomise does:
``p = #{null >= observed} / N``, so ``1/N <= p <= 1``.
"""

import logging
from dataclasses import dataclass, field

import numpy as np

from .engine import inclusive_threshold
from .inference import cluster_labels, fdr_bh, fwe_pvalues, pvalues_from_counts, tail_fwe_pvalues

logger = logging.getLogger(__name__)

__all__ = ["ContrastResult", "GLMOutput", "RandomiseResult", "assemble", "critical_value", "peak_index"]

TAILS = ("two-sided", "greater")


@dataclass(frozen=True)
class ContrastResult:
    """Observed maps and p-values of one contrast. Every map is (n_voxels,).

    p-values count the unpermuted data in the null: ``p = #{null >= obs} / n_perm``.
    Fields of an analysis not asked for (TFCE, clusters, tail approximation)
    are None. Voxels that are constant across subjects have statistic 0,
    p = 1, TFCE 0 and take no part in any maximum.

    Attributes
    ----------
    tail : {'two-sided', 'greater'}
        What the p-values test: 'two-sided' compares |t| (the Python API's
        default), 'greater' only positive effects (FSL randomise's one-sided t,
        the command line's default; test the negated contrast for the other
        sign). F contrasts are always 'greater'.
    cluster_threshold, cluster_mass_threshold : float or None
        Cluster-forming thresholds of the extent and of the mass.
    cluster_labels, cluster_mass_labels : (n_voxels,) ndarray of int or None
        0 outside clusters, 1..k inside, at each threshold.
    cluster_extent, cluster_mass : (n_voxels,) ndarray or None
        Each voxel's cluster size (voxels) and mass (sum of |statistic|);
        FSL randomise's raw ``clustere``/``clusterm`` images.
    twopass : voxstats.twopass.TwoPass or None
        Cluster-normalised statistics (``twopass=True``, t contrasts).

    ``kind`` names the statistic in ``stat``: 't', 'F', or with variance
    groups 'v' (Aspin-Welch, t contrasts) and 'G' (F contrasts). v and G are
    compared through their z scores (``z``; ``df2`` holds each voxel's degrees
    of freedom), and so are t and F when ``correct_across_contrasts`` needs one
    scale. ``p_cfwe`` and the other ``*_cfwe`` fields are FWE p-values over all
    contrasts (PALM's ``_cfwep``).
    """

    name: str
    kind: str
    weights: np.ndarray
    stat: np.ndarray
    p: np.ndarray
    p_fwe: np.ndarray
    p_fdr: np.ndarray
    null_max: np.ndarray
    tail: str = "two-sided"
    tfce: np.ndarray | None = None
    tfce_p: np.ndarray | None = None
    tfce_p_fwe: np.ndarray | None = None
    tfce_p_fdr: np.ndarray | None = None
    null_max_tfce: np.ndarray | None = None
    tfce_dh: float | None = None
    cluster_threshold: float | None = None
    cluster_labels: np.ndarray | None = None
    cluster_extent_p_fwe: np.ndarray | None = None
    cluster_mass_p_fwe: np.ndarray | None = None
    null_max_extent: np.ndarray | None = None
    null_max_mass: np.ndarray | None = None
    p_fwe_tail: np.ndarray | None = None
    tfce_p_fwe_tail: np.ndarray | None = None
    cluster_mass_threshold: float | None = None
    cluster_mass_labels: np.ndarray | None = None
    cluster_extent: np.ndarray | None = None
    cluster_mass: np.ndarray | None = None
    twopass: object = None
    z: np.ndarray | None = None
    df2: np.ndarray | None = None
    p_cfwe: np.ndarray | None = None
    tfce_p_cfwe: np.ndarray | None = None
    cluster_extent_p_cfwe: np.ndarray | None = None
    cluster_mass_p_cfwe: np.ndarray | None = None

    @property
    def peak_index(self):
        """Index of the peak the test refers to, or None for an empty map.

        Two-sided: the voxel of largest ``|stat|`` (its sign says which
        side); 'greater': the voxel of largest ``stat``. The first such voxel
        on ties.
        """
        return peak_index(self.stat, self.tail)

    @property
    def peak(self):
        """The statistic at :attr:`peak_index`, signed (e.g. -12.73 for a two-sided t whose maximum is 3.74)."""
        k = self.peak_index
        return None if k is None else float(self.stat[k])


def peak_index(stat, tail):
    """Index of the peak of ``stat`` for a test of ``tail`` ('two-sided': largest |stat|; 'greater': largest).

    Parameters
    ----------
    stat : (n_voxels,) array-like
    tail : {'two-sided', 'greater'}

    Returns
    -------
    int or None
        None when ``stat`` is empty.
    """
    if tail not in TAILS:
        raise ValueError(f"Invalid value for the 'tail' parameter. Allowed values are {', '.join(map(repr, TAILS))}, "
                         f"but got {tail!r} instead.")
    stat = np.asarray(stat)
    if not stat.size:
        return None
    return int(np.argmax(np.abs(stat) if tail == "two-sided" else stat))


@dataclass(frozen=True)
class GLMOutput:
    """The unpermuted GLM's estimates, as FSL randomise's ``--glm_output`` writes them.

    Attributes
    ----------
    pe : (n_regressors, n_voxels) ndarray
        Parameter estimates ``pinv(X) @ Y``.
    cope : (n_t_contrasts, n_voxels) ndarray
        ``c @ pe`` of each t contrast.
    varcope : (n_t_contrasts, n_voxels) ndarray
        ``c (X'X)^+ c' * sigmasqr``.
    sigmasqr : (n_voxels,) ndarray
        Residual variance RSS / (n - rank X).
    """

    pe: np.ndarray
    cope: np.ndarray
    varcope: np.ndarray
    sigmasqr: np.ndarray


@dataclass(frozen=True)
class RandomiseResult:
    """The result of :func:`voxstats.randomise` or :func:`voxstats.permuted_glm`.

    Attributes
    ----------
    contrasts : tuple of ContrastResult
        t contrasts first, then F contrasts.
    n_perm : int
        Rearrangements used, the identity included.
    exhaustive : bool
        All distinct rearrangements were enumerated.
    n_possible : int
        Number of distinct rearrangements the scheme allows.
    scheme : str
        'freedman-lane', 'permutation', 'sign-flip' or 'freedman-lane+sign-flip'.
    df : int
        Residual degrees of freedom.
    design_names : tuple of str
    masker : voxstats.masker.VolumeMasker or None
        Where the maps' elements come from (randomise only); ``to_img``
        puts maps back through it.
    settings : dict
        Every option, for the record.
    schedule : voxstats.permutation.PermutationSchedule or None
        The rearrangements, identity first (``schedule.rows(start, stop)``).
    glm : GLMOutput or None
        With ``glm_output=True``.
    mask_img : nibabel image or None
        The analysis mask of a volume ``masker`` (read-only).
    enumeration : str
        What was enumerated or drawn (e.g. "distinct rearrangements of the
        design's rows within exchangeability blocks (PALM's rule)").
    null_max_across_contrasts : dict or None
        With ``correct_across_contrasts``: the maxima over contrasts of each
        rearrangement ('stat', 'tfce', 'extent', 'mass'; None where not computed).
    variance_groups : voxstats.welch.VarianceGroups or None
    """

    contrasts: tuple
    n_perm: int
    exhaustive: bool
    n_possible: int
    scheme: str
    df: int
    design_names: tuple
    masker: object = None
    settings: dict = field(default_factory=dict)
    schedule: object = None
    glm: GLMOutput | None = None
    enumeration: str = ""
    null_max_across_contrasts: dict | None = None
    variance_groups: object = None

    @property
    def mask_img(self):
        return None if self.masker is None else getattr(self.masker, "mask_img", None)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.contrasts[key]
        for c in self.contrasts:
            if c.name == key:
                return c
        raise KeyError(f"no contrast named {key!r}; contrasts are {[c.name for c in self.contrasts]}")

    def to_img(self, values):
        """A (n_voxels,) map as an image in the input's space (0 outside the mask).

        Goes through ``masker.unmask`` (a 3D NIfTI image for volumes).
        """
        if self.masker is None:
            raise ValueError("to_img needs a mask image; this result comes from a data matrix")
        return self.masker.unmask(values)

    def summary(self, alpha=0.05):
        """A plain-text table: per contrast its kind, tail, peak and FWE-significant voxels.

        The peak is the statistic the test refers to (:attr:`ContrastResult.peak`):
        for a two-sided test the signed value of largest ``|stat|`` (-12.73
        when the map spans -12.73 .. 3.74), for a one-sided test the maximum.
        The command line's summary line uses the same rule.

        Parameters
        ----------
        alpha : float
            Significance level of the counts.

        Returns
        -------
        str
        """
        tfce = self.settings.get("tfce_mode") if self.settings.get("tfce") else None
        head = (f"{self.n_perm} rearrangements ({'exhaustive' if self.exhaustive else 'random'}, "
                f"{self.scheme}), df {self.df}"
                + (f", TFCE {tfce}" if tfce else ""))
        lines = [head, f"{'contrast':<20} {'kind':<4} {'tail':<10} {'peak':>10} "
                       f"{'FWE voxels':>10} {'TFCE FWE':>9}"]
        for c in self.contrasts:
            top = 0.0 if c.peak is None else c.peak
            n_tfce = "-" if c.tfce_p_fwe is None else str(int(np.sum(c.tfce_p_fwe < alpha)))
            lines.append(f"{c.name[:20]:<20} {c.kind:<4} {c.tail:<10} {top:>10.4g} "
                         f"{int(np.sum(c.p_fwe < alpha)):>10} {n_tfce:>9}")
        return "\n".join(lines)


def critical_value(null_max, level=0.95):
    """FSL randomise's critical value: the sorted null maxima at ``ceil(level * N)``.

    The value a statistic must exceed for FWE p < 1 - ``level`` (randomise
    prints it at the end of a run, "Critical Value for: ...").
    """
    ordered = np.sort(np.asarray(null_max, dtype=np.float64))
    return float(ordered[int(np.ceil(level * ordered.size)) - 1])


def _ones_where(p, inactive):
    if inactive is not None and inactive.any():
        p = p.copy()
        p[inactive] = 1.0
    return p


def assemble(job, contrast, observed, merged, n_perm, stat, *, tail_approximation=False):
    """Turn the observed maps and the merged null into a ContrastResult.

    ``stat`` is the float64 OLS statistic map reported to the user. Inactive
    (constant) voxels get statistic 0 and p = 1 whatever the null.
    """
    inactive = None if job.active is None else ~job.active
    if inactive is not None:
        stat = np.where(inactive, 0.0, stat)
    magnitude = np.abs(observed.stat) if job.tests_both_signs else observed.stat
    p = _ones_where(pvalues_from_counts(merged.counts, n_perm), inactive)
    fields = dict(name=contrast.name, kind=contrast.kind, weights=contrast.weights, stat=stat, p=p,
                  p_fwe=_ones_where(fwe_pvalues(magnitude, merged.null_max), inactive), p_fdr=fdr_bh(p),
                  null_max=merged.null_max, tail="two-sided" if job.tests_both_signs else "greater")
    if tail_approximation:
        fields["p_fwe_tail"] = _ones_where(tail_fwe_pvalues(magnitude, merged.null_max), inactive)
    if job.tfce:
        tfce_mag = np.abs(observed.tfce) if job.tests_both_signs else observed.tfce
        tfce_p = _ones_where(pvalues_from_counts(merged.tfce_counts, n_perm), inactive)
        fields.update(tfce=observed.tfce.astype(np.float64), tfce_p=tfce_p,
                      tfce_p_fwe=_ones_where(fwe_pvalues(tfce_mag, merged.null_max_tfce), inactive),
                      tfce_p_fdr=fdr_bh(tfce_p), null_max_tfce=merged.null_max_tfce,
                      tfce_dh=job.dh if job.fsl else None)
        if tail_approximation:
            fields["tfce_p_fwe_tail"] = _ones_where(tail_fwe_pvalues(tfce_mag, merged.null_max_tfce),
                                                    inactive)
    if job.clusters is not None:
        extent_thr, mass_thr = job.clusters
        labels, extent, mass = cluster_labels(observed.stat, inclusive_threshold(extent_thr), job.cluster_graph,
                                              two_sided=job.tests_both_signs)
        mass_labels = labels
        if mass_thr != extent_thr:
            mass_labels, _, mass = cluster_labels(observed.stat, inclusive_threshold(mass_thr), job.cluster_graph,
                                                  two_sided=job.tests_both_signs)
        p_extent = np.ones(extent.size)
        p_mass = np.ones(mass.size)
        p_extent[1:] = fwe_pvalues(extent[1:], merged.null_max_extent)
        p_mass[1:] = fwe_pvalues(mass[1:], merged.null_max_mass)
        fields.update(cluster_threshold=float(extent_thr), cluster_labels=labels,
                      cluster_mass_threshold=float(mass_thr), cluster_mass_labels=mass_labels,
                      cluster_extent=extent[labels], cluster_mass=mass[mass_labels],
                      cluster_extent_p_fwe=p_extent[labels], cluster_mass_p_fwe=p_mass[mass_labels],
                      null_max_extent=merged.null_max_extent, null_max_mass=merged.null_max_mass)
    return ContrastResult(**fields)
