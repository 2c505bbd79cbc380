"""The permutation engine: statistics of chunks of rearrangements, reduced to what inference needs.

For one contrast, the data are residualised once against the nuisance space
(Freedman-Lane). A rearrangement ``P`` (a permutation with optional sign flips)
then needs only the projections of ``P @ W`` on an orthonormal basis ``B`` of
the model space, and ``B.T @ P @ W = (P.T @ B).T @ W``: the rearrangement moves
the small basis, not the data. Projections of several rearrangements come from
one matrix product.

A chunk of the schedule (rearrangements ``start`` to ``stop - 1``) is reduced
to per-rearrangement maxima and per-voxel exceedance counts. Merging chunks is
exact and order-independent. Products are computed in groups of ``GROUP``
rearrangements aligned on the global index and in fixed voxel blocks, each by a
single-threaded BLAS call, so every number is bit-identical whatever the chunk
size or the number of threads.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import _tfce_numba
from ._pool import AdaptivePool
from .glm import f_to_z
from .tfce import fsl_step as _fsl_step
from .tfce import _check_params, batch_tfce, kernel_options
from .variance_groups import welch_maps

logger = logging.getLogger(__name__)

GROUP = 32  # rearrangements per matrix product
VOXEL_BLOCK = 4096  # voxels per matrix product (its projections stay in cache)
EXCEEDANCE_BLOCK = 32768  # voxels per task of the exceedance counts
TASK_VOXELS = 1 << 18  # voxels (rows x voxels) per task of cluster labelling


@dataclass(frozen=True)
class ContrastJob:
    """What any chunk of rearrangements needs to know about one contrast.

    Attributes
    ----------
    name : str
    kind : {'t', 'F'}
    basis : (n_subjects, p) ndarray of float32
        Orthonormal basis [tested, nuisance] of the model space.
    q : int
        Dimension of the tested space (rank of the contrast).
    df : int
    data : (n_subjects, n_voxels) ndarray of float32
        Data residualised against the nuisance space.
    sum_sq : (n_voxels,) ndarray of float64
        Column sums of squares of ``data``.
    graph : VoxelGraph or None
    two_sided : bool
        t contrasts only: test |t| (F is always one-sided).
    tfce : bool
    E, H : float
    fsl : bool
        FSL's stepped TFCE, with step ``dh``.
    dh : float or None
        Fixed TFCE step (FSL mode); None until the observed map sets it.
    cluster_threshold : float or None
    reduced_basis : (n_subjects, p - 1) ndarray of float32 or None
        The basis without the constant vector, when the nuisance space holds it.
        The residualised data then sum to zero over subjects, and so does any
        permutation of them (not a sign flip): their projection on the constant
        is 0 and need not be computed.
    welch : voxstats.variance_groups.WelchJob or None
        Variance groups: the statistic is v (kind 'v') or G (kind 'G'),
        computed as z by :func:`voxstats.variance_groups.welch_maps`.
    zstat : voxstats.variance_groups.ZConverter or None
        Convert t or F to z right after computing it (every map, TFCE and
        cluster then works on z), as PALM ``-zstat``.
    """

    name: str
    kind: str
    basis: np.ndarray
    q: int
    df: int
    data: np.ndarray
    sum_sq: np.ndarray
    graph: object
    two_sided: bool
    tfce: bool
    E: float
    H: float
    fsl: bool
    dh: float | None
    cluster_threshold: float | None
    reduced_basis: np.ndarray | None = None
    welch: object = None
    zstat: object = None

    @property
    def n_voxels(self):
        return self.data.shape[1]

    @property
    def tests_both_signs(self):
        return self.kind in ("t", "v") and self.two_sided


@dataclass(frozen=True)
class ChunkResult:
    """The reduction of rearrangements ``start`` to ``stop - 1`` for one contrast."""

    start: int
    stop: int
    null_max: np.ndarray
    counts: np.ndarray
    null_max_tfce: np.ndarray | None = None
    tfce_counts: np.ndarray | None = None
    null_max_extent: np.ndarray | None = None
    null_max_mass: np.ndarray | None = None


@dataclass(frozen=True)
class Observed:
    """The identity rearrangement's maps, as the kernels compute them (float32)."""

    stat: np.ndarray
    tfce: np.ndarray | None


def _rearranged_basis(basis, permutation, signs):
    """(P.T @ B).T for Y*_i = signs_i * W[permutation_i]: a (p, n) matrix."""
    inverse = np.empty_like(permutation)
    inverse[permutation] = np.arange(permutation.size)
    return (basis[inverse] * signs[inverse, np.newaxis].astype(basis.dtype)).T


def reduced_basis(tested, nuisance):
    """[tested, nuisance without the constant vector], or None if the constant is not nuisance."""
    n = tested.shape[0]
    constant = np.full(n, 1 / np.sqrt(n))
    if nuisance.shape[1] == 0 or np.linalg.norm(constant - nuisance @ (nuisance.T @ constant)) > 1e-8:
        return None
    rest = nuisance - np.outer(constant, constant @ nuisance)
    u, s, _ = np.linalg.svd(rest, full_matrices=False)
    # nuisance is orthonormal: the directions kept have singular value 1, the constant's is ~0
    rest = u[:, s > 0.5]
    return np.ascontiguousarray(np.hstack([tested, rest]), dtype=np.float32)


def _group_statistics(basis, job, perms, signs, pool, out):
    """Statistic maps of one group of GROUP rearrangements into ``out`` (GROUP, n_voxels).

    Voxels are taken in fixed blocks; for each, one single-threaded BLAS product
    gives the projections (GROUP * p, block) and a compiled kernel turns them
    into t or F while they are still in cache.
    """
    if job.welch is not None:
        return welch_maps(job.welch, job.data, job.sum_sq, perms, signs, pool, out)
    p = basis.shape[1]
    a = np.ascontiguousarray(np.vstack([_rearranged_basis(basis, perms[b], signs[b])
                                        for b in range(GROUP)]), dtype=np.float32)
    f_test = job.kind == "F"

    def block(start):
        stop = min(start + VOXEL_BLOCK, job.n_voxels)
        proj = a @ job.data[:, start:stop]
        _tfce_numba.stats_from_projection(proj, job.sum_sq[start:stop], float(job.df), p, job.q,
                                          f_test, out[:, start:stop])
        if job.zstat is not None:
            job.zstat.convert(out[:, start:stop])

    starts = range(0, job.n_voxels, VOXEL_BLOCK)
    if pool is None:
        for s in starts:
            block(s)
    else:
        list(pool.map(block, starts))


def statistics(job, schedule, start, stop, pool=None):
    """Statistic maps of rearrangements ``start`` to ``stop - 1``: (k, n_voxels) float32."""
    n = job.data.shape[0]
    out = np.empty((stop - start, job.n_voxels), dtype=np.float32)
    group_stats = np.empty((GROUP, job.n_voxels), dtype=np.float32)
    for g in range(start // GROUP, (stop - 1) // GROUP + 1):
        lo, hi = g * GROUP, (g + 1) * GROUP
        # the group's rows, computed on demand from the schedule (padding: identity, discarded)
        perms = np.broadcast_to(np.arange(n), (GROUP, n)).copy()
        signs = np.ones((GROUP, n), dtype=np.int8)
        last = min(hi, schedule.n_perm)
        perms[:last - lo], signs[:last - lo] = schedule.rows(lo, last)
        # the basis depends on the schedule's whole group, never on the chunk's bounds
        flips = bool(np.any(signs < 0))
        basis = job.basis if flips or job.reduced_basis is None else job.reduced_basis
        _group_statistics(basis, job, perms, signs, pool, group_stats)
        first, last = max(lo, start), min(hi, stop)
        out[first - start:last - start] = group_stats[first - lo:last - lo]
    return out


def _enhanceable(job, stats):
    """The maps TFCE is applied to: t itself, or F converted to z (v, G and -zstat maps are z)."""
    if job.kind == "t" or job.welch is not None or job.zstat is not None:
        return stats
    return f_to_z(stats, job.q, job.df).astype(np.float32)


def tfce_maps(job, stats, pool=None, *, check=False):
    """TFCE of a batch of statistic maps (float32, same shape), rows dealt to ``pool``'s threads.

    ``check`` (the unpermuted map): refuse a step count or heights the kernels
    cannot handle (:func:`voxstats.tfce._check_params`), before any permutation.
    """
    enhanced = _enhanceable(job, stats)
    if check:
        top = float(np.abs(enhanced).max()) if enhanced.size else 0.0
        _check_params(job.E, job.H, "fsl" if job.fsl else "exact", job.dh, max_height=top,
                      n_elements=enhanced.shape[-1])
    return batch_tfce(enhanced, job.graph, E=job.E, H=job.H, fsl=job.fsl, dh=job.dh,
                      two_sided=job.tests_both_signs, pool=pool)


def observed_maps(job, schedule, n_threads, pool=None):
    """Maps of the identity rearrangement (row 0 of the schedule)."""
    stat = statistics(job, schedule, 0, 1, pool)
    enhanced = tfce_maps(job, stat, pool, check=True)[0] if job.tfce else None
    return Observed(stat=stat[0], tfce=enhanced)


def fsl_step(job, observed):
    """FSL's fixed TFCE step: max of the unpermuted (enhanced) map / 100, in single precision."""
    enhanced = _enhanceable(job, observed.stat[np.newaxis])[0]
    top = float(np.abs(enhanced).max() if job.tests_both_signs else max(enhanced.max(), 0.0))
    return _fsl_step(top)


def _exceedances(job, maps, observed, pool=None):
    """Per-voxel counts of maps >= observed, and each map's maximum (|.| if two-sided).

    Voxels go in blocks of EXCEEDANCE_BLOCK, dealt to ``pool``'s threads; block
    maxima combine by max, so the result does not depend on the threads.
    """
    n_maps, n_vox = maps.shape
    counts = np.zeros(n_vox, dtype=np.int64)
    observed = np.ascontiguousarray(observed, dtype=np.float32)
    starts = range(0, n_vox, EXCEEDANCE_BLOCK)
    maxima = np.full((len(starts), n_maps), -np.inf, dtype=np.float32)

    def block(i):
        lo = starts[i]
        _tfce_numba.exceedances(maps, observed, job.tests_both_signs, lo, min(lo + EXCEEDANCE_BLOCK, n_vox),
                                counts, maxima[i])

    _deal(pool, block, range(len(starts)))
    return counts, maxima.max(axis=0).astype(np.float64)


def _cluster_maxima(job, stats, pool=None):
    """Largest cluster extent and mass of each map; groups of maps dealt to ``pool``'s threads."""
    n_maps, n_vox = stats.shape
    extent = np.zeros(n_maps)
    mass = np.zeros(n_maps)
    weights, _ = kernel_options(job.graph, False)
    step = max(1, -(-TASK_VOXELS // max(n_vox, 1)))

    def rows(lo):
        _tfce_numba.cluster_maxima_rows(stats, lo, min(lo + step, n_maps), float(job.cluster_threshold),
                                        job.tests_both_signs, job.graph.neighbours, weights, extent, mass)

    _deal(pool, rows, range(0, n_maps, step))
    return extent, mass


def _deal(pool, task, items):
    """Run ``task`` on every item, on ``pool``'s threads (dynamically) or here."""
    items = list(items)
    if pool is None or len(items) < 2:
        for item in items:
            task(item)
    else:
        list(pool.map(task, items))


def run_chunk(job, schedule, start, stop, observed, n_threads, pool=None):
    """Reduce rearrangements ``start`` to ``stop - 1`` to maxima and exceedance counts."""
    stats = statistics(job, schedule, start, stop, pool)
    result = {}
    result["counts"], result["null_max"] = _exceedances(job, stats, observed.stat, pool)
    if job.tfce:
        result["tfce_counts"], result["null_max_tfce"] = _exceedances(
            job, tfce_maps(job, stats, pool), observed.tfce, pool)
    if job.cluster_threshold is not None:
        result["null_max_extent"], result["null_max_mass"] = _cluster_maxima(job, stats, pool)
    return ChunkResult(start=start, stop=stop, **result)


def merge_chunks(chunks, n_perm):
    """Merge chunk results (any order) into one ChunkResult covering 0..n_perm-1."""
    chunks = sorted(chunks, key=lambda c: c.start)
    covered = [(c.start, c.stop) for c in chunks]
    expected = 0
    for lo, hi in covered:
        if lo != expected:
            raise ValueError(f"chunks do not tile the schedule: gap or overlap at rearrangement {expected}")
        expected = hi
    if expected != n_perm:
        raise ValueError(f"chunks cover {expected} of {n_perm} rearrangements")

    def cat(field):
        parts = [getattr(c, field) for c in chunks]
        return None if parts[0] is None else np.concatenate(parts)

    def add(field):
        parts = [getattr(c, field) for c in chunks]
        return None if parts[0] is None else np.sum(parts, axis=0)

    return ChunkResult(start=0, stop=n_perm, null_max=cat("null_max"), counts=add("counts"),
                       null_max_tfce=cat("null_max_tfce"), tfce_counts=add("tfce_counts"),
                       null_max_extent=cat("null_max_extent"), null_max_mass=cat("null_max_mass"))


class ChunkBounds(Sequence):
    """The (start, stop) chunks of 0..n_perm-1, computed on access (no list, whatever n_perm)."""

    def __init__(self, n_perm, chunk_size):
        self.n_perm, self.chunk_size = int(n_perm), int(chunk_size)
        self._starts = range(0, self.n_perm, self.chunk_size)

    def __len__(self):
        return len(self._starts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        lo = self._starts[i]
        return (lo, min(lo + self.chunk_size, self.n_perm))

    def __eq__(self, other):
        return list(self) == list(other) if isinstance(other, (list, tuple, ChunkBounds)) else NotImplemented


def chunk_bounds(n_perm, chunk_size):
    """The (start, stop) chunks splitting 0..n_perm-1 into chunks of ``chunk_size`` (a lazy sequence)."""
    return ChunkBounds(n_perm, chunk_size)


def default_chunk_size(n_voxels):
    """Rearrangements per chunk: a multiple of GROUP, about 12 million values per batch."""
    size = int(np.clip(12_000_000 // max(n_voxels, 1), GROUP, 256))
    return max(GROUP, size - size % GROUP)


def make_pool(n_threads):
    """Threads for the engine's tasks (None for one thread).

    An :class:`~voxstats._pool.AdaptivePool`: it runs a batch of tasks on its
    threads only while that is faster than one thread (a busy machine may give
    the process no more CPU for more threads); results are the same either way.
    """
    return AdaptivePool(n_threads) if n_threads > 1 else None
