"""numba kernels of TFCE and cluster labelling (the engine's other kernels are in ``_engine_numba``).

Voxels are the nodes of a graph given as a padded neighbour table
``neighbours[v, :]`` (-1 pads the rows of voxels with fewer neighbours), so one
kernel serves 2D and 3D grids of any connectivity and surface meshes. Every
TFCE and cluster kernel takes ``weights`` (a cluster's extent is the sum of
its nodes' weights; an empty array means 1 per node) and ``skip`` (nodes that
take no part, e.g. the volume border in FSL mode; empty: none). The plain
NumPy/SciPy twins used by the tests live in ``voxstats/_reference.py``.

The exact TFCE sweep
--------------------
Voxels are visited once, by decreasing ``|value|``, and joined to their already
visited neighbours of the same sign with a union-find. Between two visits the
clusters do not change, so each cluster's contribution over a height interval
``[h_lo, h_hi]`` is ``extent**E * (F(h_hi) - F(h_lo))``. Every visit that joins
a cluster (or starts one) opens a new interval for it; when the interval
closes (the cluster's next visit, or height 0) its contribution is recorded at
the visit that opened it, with a link to the visit that closed it. These links
form a tree (Kruskal's reconstruction tree) in which a voxel's TFCE is the sum
of the contributions on its path to the root, computed for all voxels in one
pass in reverse visiting order. Every term is >= 0: nothing cancels, so a voxel
whose every interval adds nothing (below FSL's first step) gets exactly 0, and
tiny values keep their relative precision.

``F`` is ``h**(H+1)/(H+1)`` for the exact integral, or, for FSL's stepped
convention, the cumulative sum of ``h_k**H`` over the thresholds ``h_k < h``
(``h_k`` accumulated in single precision as FSL does, see ``voxstats.tfce``).

Memory
------
Visiting by value jumps around memory. The union-find keeps its parents in
an array of their own (uint32, 4 bytes per voxel: the lookups of the visited
neighbours, 2.4 per voxel, read only these), apart from the open-interval
positions (uint32) and extents (float64), which are read at roots only: 10 %
less CPU per map than one 16-byte record per voxel on the 1 mm brain, 3 % on
the 2 mm brain. Per visit position: the contribution, the closing link and
the sign (positions close to each other in time are close in memory). The
parent and the neighbour row of the voxel visited 16 steps ahead are
prefetched, and 8 steps ahead the parents of its neighbours (7-16 % less CPU
per map on the 2 mm brain, 17 % on the 1 mm brain).
Indices are unsigned so that no negative-index wraparound is compiled in.

Threads
-------
The kernels release the GIL and work on caller-provided work space; the Python
layer (``voxstats.tfce.batch_tfce``) deals rows to threads dynamically. A row's
result never depends on which thread computes it.
"""

import numpy as np

from ._numba import JIT, njit, prefetch

_AHEAD = 16  # visits between a prefetch and the use of the data
_NEAR = 8  # visits between the prefetch of the neighbours' records and their use
JIT_NOGIL = dict(JIT, nogil=True)


@njit(**JIT)
def _height_term(h, H, fsl, thresholds, cumulative):
    """F(h): the integral of h'**H from 0 to h (exact) or the stepped sum (FSL).

    FSL: ``cumulative[m]`` with m the number of ``thresholds`` (increasing,
    ``thresholds[0] = 0``) strictly below h.
    """
    if not fsl:
        if H == 2.0:
            return h * h * h * (1.0 / 3.0)
        return h ** (H + 1.0) / (H + 1.0)
    n_thr = thresholds.shape[0]
    m = min(int(h / thresholds[1]), n_thr)  # thresholds[k] is about k * dh
    while m > 0 and thresholds[m - 1] >= h:
        m -= 1
    while m < n_thr and thresholds[m] < h:
        m += 1
    return cumulative[m]


@njit(**JIT)
def _size_pow(size, E):
    """size**E, with the common exponents computed without pow()."""
    if E == 0.5:
        return np.sqrt(size)
    if E == 1.0:
        return size
    return size ** E


@njit(**JIT)
def _find(x, parent):
    """Root of ``x`` (path halving on the parent links ``parent[v]``)."""
    while True:
        up = parent[x]
        if up == x:
            return x
        grand = parent[up]
        parent[x] = grand
        x = grand


@njit(inline="always", **JIT)
def _scatter(src_k, src_i, dst_k, dst_i, lo, hi, shift, mask, start, slots):
    """One stable counting-sort pass: ``src[lo:hi]`` to ``dst`` by ``(key >> shift) & mask``.

    ``slots[start + digit]`` holds the next free position of each digit (the
    exclusive prefix sums of its counts) and is advanced.
    """
    for i in range(lo, hi):
        k = src_k[i]
        b = start + ((k >> shift) & mask)
        pos = slots[b]
        slots[b] = pos + 1
        dst_k[pos] = k
        dst_i[pos] = src_i[i]


@njit(**JIT)
def _radix_order_desc(keys, n, order, key_tmp, idx_tmp, hist):
    """Stable LSD radix sort of ``keys[:n]`` (uint32, < 2**31) in decreasing order.

    ``order[:n]`` holds a payload per key (e.g. voxel indices) and is permuted
    with the keys; on return ``keys[:n]`` hold the complemented keys
    (``0x7FFFFFFF - key``) in sorted (increasing) order. Three passes (11, 10
    and 10 bits) whose histograms are counted in one read; the passes
    alternate between the arrays and their ``_tmp`` twins.
    """
    hist[:] = 0
    for i in range(n):
        k = np.uint32(0x7FFFFFFF) - keys[i]
        keys[i] = k
        hist[k & 2047] += 1
        hist[2048 + ((k >> 11) & 1023)] += 1
        hist[3072 + (k >> 21)] += 1
    for lo, width in ((0, 2048), (2048, 1024), (3072, 1024)):
        total = 0
        for b in range(lo, lo + width):
            c = hist[b]
            hist[b] = total
            total += c
    src_k, src_i, dst_k, dst_i = keys, order, key_tmp, idx_tmp
    for shift, mask, lo in ((0, 2047, 0), (11, 1023, 2048), (21, 1023, 3072)):
        _scatter(src_k, src_i, dst_k, dst_i, 0, n, shift, mask, lo, hist)
        src_k, src_i, dst_k, dst_i = dst_k, dst_i, src_k, src_i
    for i in range(n):  # after three passes the sorted data are in the twins
        keys[i] = key_tmp[i]
        order[i] = idx_tmp[i]


# Above this many voxels the LSD sort's three scattering passes over the whole map miss the
# cache on every write; the MSD sort scatters once and sorts each bucket in cache (1 mm brain:
# 28 -> 18 ms per map; below ~700,000 voxels the LSD sort is faster). Both give one order.
_MSD_MIN = 800_000


@njit(**JIT)
def _sort_low_bits(src_k, src_i, dst_k, dst_i, lo, hi, counts):
    """Stable sort of ``src[lo:hi]`` by the low 20 bits of the keys into ``dst[lo:hi]``.

    Three LSD passes (7, 7 and 6 bits; ``src`` is overwritten as scratch), or
    an insertion sort for 32 keys or fewer. ``counts``: int64 work, >= 320.
    """
    if hi - lo <= 32:
        for i in range(lo, hi):
            k = src_k[i]
            x = src_i[i]
            low = k & 0xFFFFF
            p = i
            while p > lo and (dst_k[p - 1] & 0xFFFFF) > low:
                dst_k[p] = dst_k[p - 1]
                dst_i[p] = dst_i[p - 1]
                p -= 1
            dst_k[p] = k
            dst_i[p] = x
        return
    counts[:320] = 0
    for i in range(lo, hi):
        k = src_k[i]
        counts[k & 127] += 1
        counts[128 + ((k >> 7) & 127)] += 1
        counts[256 + ((k >> 14) & 63)] += 1
    for start, width in ((0, 128), (128, 128), (256, 64)):
        total = lo
        for b in range(start, start + width):
            c = counts[b]
            counts[b] = total
            total += c
    # bits 0-6: src -> dst, bits 7-13: dst -> src, bits 14-19: src -> dst
    for shift, mask, start, forward in ((0, 127, 0, True), (7, 127, 128, False), (14, 63, 256, True)):
        if forward:
            _scatter(src_k, src_i, dst_k, dst_i, lo, hi, shift, mask, start, counts)
        else:
            _scatter(dst_k, dst_i, src_k, src_i, lo, hi, shift, mask, start, counts)


@njit(**JIT)
def _radix_order_desc_msd(keys, n, order, key_tmp, idx_tmp, hist):
    """:func:`_radix_order_desc` for large maps: one stable pass on the top 11 bits, then each bucket.

    Same contract and the same result (both sorts are stable); ``hist`` holds
    at least 2,368 int64.
    """
    top = hist[:2048]
    counts = hist[2048:]
    top[:] = 0
    for i in range(n):
        k = np.uint32(0x7FFFFFFF) - keys[i]
        keys[i] = k
        top[k >> 20] += 1
    total = 0
    for b in range(2048):
        c = top[b]
        top[b] = total
        total += c
    _scatter(keys, order, key_tmp, idx_tmp, 0, n, 20, 2047, 0, top)
    lo = 0
    for b in range(2048):  # top[b] is now the end of bucket b
        hi = top[b]
        if hi > lo:
            _sort_low_bits(key_tmp, idx_tmp, keys, order, lo, hi, counts)
        lo = hi


@njit(**JIT)
def _tfce_sweep(visit, visit_height, n_active, state, neighbours, weights, E, H, fsl, thresholds,
                cumulative, out, node, val, up, sgn, born, roots):
    """One TFCE pass over the voxels ``visit[:n_active]`` (by decreasing height).

    ``visit_height[j]`` is |value| of ``visit[j]``; ``state[v]`` is the sign of an
    active voxel (+1 or -1) and 0 for voxels that take no part (left modified:
    a visited voxel's state is doubled, +2/-2, so the test of a neighbour reads
    one byte). ``out`` receives sign * TFCE, 0 elsewhere.

    Work space: ``node`` (2 * n_voxels float64): its first half holds, as
    uint32, every voxel's union-find parent then the position of the open
    interval of the cluster it is the root of; its second half the clusters'
    extents (float64, read at roots only); per visit
    position ``val`` (F at the interval's top, then its contribution), ``up``
    (position of the visit that closed it, -1 at height 0), ``sgn``; ``born``
    (voxels that started a cluster); ``roots`` (one per neighbour).
    """
    n_vox = out.shape[0]
    degree = neighbours.shape[1]
    nbr = neighbours.reshape(-1)
    weighted = weights.shape[0] > 0
    parent = node[:n_vox].view(np.uint32)[:n_vox]
    opened = node[:n_vox].view(np.uint32)[n_vox:]
    extent = node[n_vox:]
    for i in range(n_vox):
        out[i] = 0.0
    n_born = 0
    for j in range(n_active):
        if j + _AHEAD < n_active:
            ahead = visit[j + _AHEAD]
            prefetch(parent, ahead)
            if weighted:
                prefetch(weights, ahead)
            prefetch(nbr, degree * ahead)
        if j + _NEAR < n_active:  # its neighbour row has arrived: fetch the neighbours' parents
            near = degree * visit[j + _NEAR]
            for k in range(degree):
                nb = nbr[near + k]
                if nb >= 0:
                    prefetch(parent, nb)
        v = visit[j]
        term = _height_term(np.float64(visit_height[j]), H, fsl, thresholds, cumulative)
        val[j] = term
        s = state[v]
        sgn[j] = s
        visited = s + s
        # distinct roots of the visited neighbours of the same sign
        n_roots = 0
        row = degree * v
        for k in range(degree):
            nb = nbr[row + k]
            if nb < 0 or state[nb] != visited:
                continue
            r = _find(np.uint32(nb), parent)
            m = 0
            while m < n_roots and roots[m] != r:
                m += 1
            if m == n_roots:
                roots[n_roots] = r
                n_roots += 1
        state[v] = visited
        w = weights[v] if weighted else 1.0
        if n_roots == 0:  # a new cluster is born at this height; v opens its first interval
            parent[v] = v
            opened[v] = np.uint32(j)
            extent[v] = w
            born[n_born] = v
            n_born += 1
            continue
        # close the clusters' open intervals at this height; the largest absorbs the others and v
        big = roots[0]
        big_size = extent[big]
        for m in range(n_roots):
            r = roots[m]
            q = opened[r]
            size = extent[r]
            val[q] = _size_pow(size, E) * (val[q] - term)
            up[q] = j
            if size > big_size:
                big = r
                big_size = size
        for m in range(n_roots):
            r = roots[m]
            if r != big:
                parent[r] = big
                big_size += extent[r]
        parent[v] = big
        opened[big] = np.uint32(j)
        extent[big] = big_size + w
    base = _height_term(0.0, H, fsl, thresholds, cumulative)
    for i in range(n_born):  # the clusters left at the end: their last interval ends at height 0
        r = born[i]
        if parent[r] == r:
            q = opened[r]
            val[q] = _size_pow(extent[r], E) * (val[q] - base)
            up[q] = -1
    # a visit's TFCE: its interval's contribution plus the total of the visit that closed it
    for j in range(n_active - 1, -1, -1):
        q = up[j]
        total = val[j] if q < 0 else val[j] + val[q]
        val[j] = total
        out[visit[j]] = total if sgn[j] > 0 else -total


@njit(**JIT)
def tfce_graph(values, order, neighbours, weights, skip, two_sided, E, H, fsl, thresholds, cumulative):
    """TFCE of one float64 map; ``order`` sorts |values| decreasingly."""
    n_vox = values.shape[0]
    state = np.zeros(n_vox, dtype=np.int8)
    visit = np.empty(n_vox, dtype=np.uint32)
    visit_height = np.empty(n_vox)
    skipping = skip.shape[0] > 0
    n_active = 0
    for j in range(n_vox):
        v = order[j]
        x = values[v]
        if skipping and skip[v]:
            continue
        if x > 0 or (two_sided and x < 0):
            state[v] = 1 if x > 0 else -1
            visit[n_active] = v
            visit_height[n_active] = abs(x)
            n_active += 1
    out = np.zeros(n_vox)
    _tfce_sweep(visit, visit_height, n_active, state, neighbours, weights, E, H, fsl, thresholds,
                cumulative, out, np.empty(2 * n_vox), np.empty(n_vox), np.empty(n_vox, np.int32),
                np.empty(n_vox, np.int8), np.empty(n_vox, np.uint32),
                np.empty(max(neighbours.shape[1], 1), np.uint32))
    return out


def tfce_work(n_vox, degree):
    """Work space of :func:`tfce_rows` for maps of ``n_vox`` voxels (about 60 bytes per voxel)."""
    return (np.empty(2 * n_vox, np.int8), np.empty(7 * n_vox + max(degree, 1), np.uint32),
            np.empty(4 * n_vox), np.empty(4096, np.int64))


@njit(**JIT_NOGIL)
def _active_keys(row, skip, two_sided, state, keys, visit):
    """Signs of a float32 map into ``state``, |x| as ordered uint32 keys of the active voxels."""
    n_vox = row.shape[0]
    skipping = skip.shape[0] > 0
    row_bits = row.view(np.uint32)
    n_active = 0
    for v in range(n_vox):
        x = row[v]
        if skipping and skip[v]:
            s = 0
        elif x > 0:
            s = 1
        elif two_sided and x < 0:
            s = -1
        else:
            s = 0
        state[v] = s
        if s != 0:
            keys[n_active] = row_bits[v] & np.uint32(0x7FFFFFFF)  # |x| as ordered bits
            visit[n_active] = v
            n_active += 1
    return n_active


@njit(**JIT_NOGIL)
def tfce_rows(stats, lo, hi, neighbours, weights, skip, two_sided, E, H, fsl, thresholds, cumulative, out,
              work8, work32, work64, hist):
    """TFCE of rows ``lo`` to ``hi - 1`` of ``stats`` (float32, (n_maps, n_voxels)) into ``out``.

    Releases the GIL; the work arrays come from :func:`tfce_work` (one set per
    thread). Each row is sorted by a radix sort of its float32 bits (LSD, or MSD from
    ``_MSD_MIN`` active voxels on), then swept.
    """
    n_vox = stats.shape[1]
    state, sgn = work8[:n_vox], work8[n_vox:2 * n_vox]
    keys, visit = work32[:n_vox], work32[n_vox:2 * n_vox]
    key_tmp, idx_tmp = work32[2 * n_vox:3 * n_vox], work32[3 * n_vox:4 * n_vox]
    born, up = work32[4 * n_vox:5 * n_vox], work32[5 * n_vox:6 * n_vox].view(np.int32)
    visit_bits = work32[6 * n_vox:7 * n_vox]
    roots = work32[7 * n_vox:]
    visit_height = visit_bits.view(np.float32)
    node, val = work64[:2 * n_vox], work64[2 * n_vox:3 * n_vox]
    for b in range(lo, hi):
        n_active = _active_keys(stats[b], skip, two_sided, state, keys, visit)
        if n_active >= _MSD_MIN:
            _radix_order_desc_msd(keys, n_active, visit, key_tmp, idx_tmp, hist)
        else:
            _radix_order_desc(keys, n_active, visit, key_tmp, idx_tmp, hist)
        for j in range(n_active):
            visit_bits[j] = np.uint32(0x7FFFFFFF) - keys[j]
        _tfce_sweep(visit, visit_height, n_active, state, neighbours, weights, E, H, fsl, thresholds,
                    cumulative, out[b], node, val, up, sgn, born, roots)


@njit(**JIT)
def _label_root(x, parent):
    while parent[x] != x:
        parent[x] = parent[parent[x]]  # path halving
        x = parent[x]
    return x


@njit(**JIT_NOGIL)
def cluster_maxima_rows(stats, lo, hi, threshold, two_sided, neighbours, weights, max_extent, max_mass):
    """Largest cluster extent and mass of rows ``lo`` to ``hi - 1`` of ``stats`` beyond ``threshold``.

    Clusters hold voxels > threshold (and, when two-sided, voxels < -threshold,
    never mixed with positive ones). Extent is the number of voxels and mass
    the sum of |statistic|; with ``weights`` (non-empty), the sums of the
    weights and of weight * |statistic| (area-weighted, e.g. mm^2 on a mesh).
    Releases the GIL (the engine deals groups of rows to threads).
    """
    n_vox = stats.shape[1]
    degree = neighbours.shape[1]
    weighted = weights.shape[0] > 0
    parent = np.empty(n_vox, np.int64)
    size = np.empty(n_vox, np.int64)
    extent = np.empty(n_vox)
    mass = np.empty(n_vox)
    for b in range(lo, hi):
        row = stats[b]
        for v in range(n_vox):
            x = row[v]
            if x > threshold or (two_sided and x < -threshold):
                parent[v] = v
                size[v] = 1
                w = weights[v] if weighted else 1.0
                extent[v] = w
                mass[v] = w * abs(x)
            else:
                parent[v] = -1
        for v in range(n_vox):
            if parent[v] < 0:
                continue
            positive = row[v] > 0
            for k in range(degree):
                nb = neighbours[v, k]
                if nb < 0 or nb >= v or parent[nb] < 0 or (row[nb] > 0) != positive:
                    continue
                r = _label_root(nb, parent)
                rv = _label_root(v, parent)
                if r == rv:
                    continue
                if size[r] < size[rv]:
                    r, rv = rv, r
                parent[rv] = r
                size[r] += size[rv]
                extent[r] += extent[rv]
                mass[r] += mass[rv]
        best_e = 0.0
        best_m = 0.0
        for v in range(n_vox):
            if parent[v] == v:
                best_e = max(best_e, extent[v])
                best_m = max(best_m, mass[v])
        max_extent[b] = best_e
        max_mass[b] = best_m
