"""numba kernels of TFCE, cluster labelling and statistics from projections.

Voxels are the nodes of a graph given as a padded neighbour table
``neighbours[v, :]`` (-1 pads the rows of voxels with fewer neighbours), so one
kernel serves 2D and 3D grids of any connectivity and surface meshes. The
plain NumPy/SciPy twins used by the tests live in ``voxstats/_reference.py``.

The exact TFCE sweep
--------------------
Voxels are visited once, by decreasing ``|value|``, and joined to their already
visited neighbours of the same sign with a union-find. Between two visits the
clusters do not change, so each cluster's contribution over a height interval
``[h_lo, h_hi]`` is ``size**E * (F(h_hi) - F(h_lo))``; it is added lazily, at the
root of the cluster, only when the cluster changes. Every node stores an offset
and the TFCE value of a voxel is the sum of the offsets on its path to the root
(a weighted union-find), so no voxel is visited twice.

``F`` is ``h**(H+1)/(H+1)`` for the exact integral, or the cumulative sum of
``(k*dh)**H`` over the thresholds ``k*dh < h`` for FSL's stepped convention.

Visiting by value jumps around memory, so the per-voxel union-find data live in
one record per voxel (``node[v] = parent, size, offset, last F``) and the
records of voxels a few steps ahead are prefetched.
"""

import numpy as np

from ._numba import JIT, njit, prange, prefetch

_MAX_DEPTH = 64  # union by size keeps trees shallower than log2(n_voxels) + 1
_AHEAD = 16  # visits between a prefetch and the use of the data
PARENT, SIZE, OFFSET, LAST = 0, 1, 2, 3


@njit(**JIT)
def _height_term(h, H, fsl, dh, cumulative):
    """F(h): the integral of h'**H from 0 to h (exact) or the stepped sum (FSL)."""
    if not fsl:
        if H == 2.0:
            return h * h * h / 3.0
        return h ** (H + 1.0) / (H + 1.0)
    # number of thresholds k*dh (k >= 0) strictly below h
    m = int(np.ceil(h / dh))
    while m > 0 and (m - 1) * dh >= h:
        m -= 1
    while m * dh < h:
        m += 1
    return cumulative[m]


@njit(**JIT)
def _find(x, node, stack):
    """Root of ``x``, compressing the path while keeping every offset sum."""
    up = np.int64(node[x, PARENT])
    if up == x or np.int64(node[up, PARENT]) == up:  # x is a root or a root's child
        return up
    depth = 0
    root = x
    while True:
        up = np.int64(node[root, PARENT])
        if up == root:
            break
        stack[depth] = root
        depth += 1
        root = up
    acc = 0.0
    for j in range(depth - 1, -1, -1):
        child = stack[j]
        acc += node[child, OFFSET]
        node[child, OFFSET] = acc
        node[child, PARENT] = root
    return root


@njit(**JIT)
def _radix_order_desc(keys, n, order, key_buf, key_tmp, idx_tmp, hist):
    """Stable LSD radix sort of ``keys[:n]`` (uint32) in decreasing order.

    ``order[:n]`` holds a payload per key (e.g. voxel indices) and is permuted
    with the keys; ``key_buf[:n]`` receives the complemented keys
    (``0xFFFFFFFF - key``) in the sorted order.
    """
    for i in range(n):
        key_buf[i] = np.uint32(0xFFFFFFFF) - keys[i]
    for shift in (0, 11, 22):
        hist[:] = 0
        for i in range(n):
            hist[((key_buf[i] >> shift) & 2047) + 1] += 1
        for b in range(2048):
            hist[b + 1] += hist[b]
        for i in range(n):
            b = (key_buf[i] >> shift) & 2047
            pos = hist[b]
            hist[b] = pos + 1
            key_tmp[pos] = key_buf[i]
            idx_tmp[pos] = order[i]
        for i in range(n):
            key_buf[i] = key_tmp[i]
            order[i] = idx_tmp[i]


@njit(**JIT)
def _tfce_sweep(visit, visit_height, n_active, state, neighbours, E, H, fsl, dh, cumulative,
                out, node, stack, roots):
    """One TFCE pass over the voxels ``visit[:n_active]`` (by decreasing height).

    ``visit_height[j]`` is |value| of ``visit[j]``; ``state[v]`` is the sign of an
    active voxel (+1 or -1) and 0 for voxels that take no part. ``out`` receives
    sign * TFCE, 0 elsewhere. ``node``, ``stack`` and ``roots`` are work space;
    ``state`` is restored on return. A visited voxel's state is doubled (+2/-2),
    so the test of a neighbour reads one byte (an array that stays in cache).
    """
    n_vox = out.shape[0]
    degree = neighbours.shape[1]
    for i in range(n_vox):
        out[i] = 0.0
    for j in range(n_active):
        if j + 2 * _AHEAD < n_active:
            prefetch(neighbours, visit[j + 2 * _AHEAD] * degree)
        if j + _AHEAD < n_active:
            ahead = visit[j + _AHEAD]
            prefetch(node, ahead * 4)
            for k in range(degree):
                nb = neighbours[ahead, k]
                if nb >= 0:
                    prefetch(node, nb * 4)
                    prefetch(state, nb)
        v = visit[j]
        term = _height_term(np.float64(visit_height[j]), H, fsl, dh, cumulative)
        visited = 2 * state[v]
        # distinct roots of the visited neighbours of the same sign
        n_roots = 0
        for k in range(degree):
            nb = neighbours[v, k]
            if nb < 0 or state[nb] != visited:
                continue
            r = _find(nb, node, stack)
            seen = False
            for m in range(n_roots):
                if roots[m] == r:
                    seen = True
                    break
            if not seen:
                roots[n_roots] = r
                n_roots += 1
        state[v] = visited
        if n_roots == 0:  # a new cluster is born at this height
            node[v, PARENT] = v
            node[v, SIZE] = 1.0
            node[v, OFFSET] = 0.0
            node[v, LAST] = term
            continue
        # bring the clusters down to this height; the largest absorbs the others and v
        big = roots[0]
        for m in range(n_roots):
            r = roots[m]
            node[r, OFFSET] += _size_pow(node[r, SIZE], E) * (node[r, LAST] - term)
            node[r, LAST] = term
            if node[r, SIZE] > node[big, SIZE]:
                big = r
        for m in range(n_roots):
            r = roots[m]
            if r != big:
                node[r, PARENT] = big
                node[r, OFFSET] -= node[big, OFFSET]
                node[big, SIZE] += node[r, SIZE]
        node[v, PARENT] = big
        node[v, OFFSET] = -node[big, OFFSET]
        node[big, SIZE] += 1.0
    base = _height_term(0.0, H, fsl, dh, cumulative)
    for v in range(n_vox):
        if state[v] != 0 and node[v, PARENT] == v:
            node[v, OFFSET] += _size_pow(node[v, SIZE], E) * (node[v, LAST] - base)
    for v in range(n_vox):
        s = state[v]
        if s == 0:
            continue
        r = _find(v, node, stack)
        value = node[v, OFFSET] if r == v else node[v, OFFSET] + node[r, OFFSET]
        sign = 1 if s > 0 else -1
        out[v] = sign * value
        state[v] = sign


@njit(**JIT)
def _size_pow(size, E):
    """size**E, with the common exponents computed without pow()."""
    if E == 0.5:
        return np.sqrt(size)
    if E == 1.0:
        return size
    return size ** E


@njit(**JIT)
def tfce_graph(values, order, neighbours, two_sided, E, H, fsl, dh, cumulative):
    """TFCE of one float64 map; ``order`` sorts |values| decreasingly."""
    n_vox = values.shape[0]
    state = np.zeros(n_vox, dtype=np.int8)
    visit = np.empty(n_vox, dtype=np.int64)
    visit_height = np.empty(n_vox)
    n_active = 0
    for j in range(n_vox):
        v = order[j]
        x = values[v]
        if x > 0 or (two_sided and x < 0):
            state[v] = 1 if x > 0 else -1
            visit[n_active] = v
            visit_height[n_active] = abs(x)
            n_active += 1
    out = np.zeros(n_vox)
    _tfce_sweep(visit, visit_height, n_active, state, neighbours, E, H, fsl, dh, cumulative, out, np.empty((n_vox, 4)), np.empty(_MAX_DEPTH, np.int64),
                np.empty(max(neighbours.shape[1], 1), np.int64))
    return out


@njit(parallel=True, **JIT)
def tfce_batch(stats, neighbours, two_sided, E, H, fsl, dh, cumulative, out, n_threads):
    """TFCE of every row of ``stats`` (float32, (n_maps, n_voxels)) into ``out``.

    Rows are dealt to threads in a fixed pattern and each thread owns its work
    space, so the result does not depend on the number of threads.
    """
    n_maps, n_vox = stats.shape
    for t in prange(n_threads):
        state = np.empty(n_vox, np.int8)
        keys = np.empty(n_vox, np.uint32)
        visit = np.empty(n_vox, np.int64)
        key_buf = np.empty(n_vox, np.uint32)
        key_tmp = np.empty(n_vox, np.uint32)
        idx_tmp = np.empty(n_vox, np.int64)
        visit_height = np.empty(n_vox, np.float32)
        visit_bits = visit_height.view(np.uint32)
        node = np.empty((n_vox, 4))
        stack = np.empty(_MAX_DEPTH, np.int64)
        roots = np.empty(max(neighbours.shape[1], 1), np.int64)
        hist = np.empty(2049, np.int64)
        for b in range(t, n_maps, n_threads):
            row = stats[b]
            row_bits = row.view(np.uint32)
            n_active = 0
            for v in range(n_vox):
                x = row[v]
                if x > 0:
                    state[v] = 1
                elif two_sided and x < 0:
                    state[v] = -1
                else:
                    state[v] = 0
                    continue
                keys[n_active] = row_bits[v] & np.uint32(0x7FFFFFFF)  # |x| as ordered bits
                visit[n_active] = v
                n_active += 1
            _radix_order_desc(keys, n_active, visit, key_buf, key_tmp, idx_tmp, hist)
            for j in range(n_active):
                visit_bits[j] = np.uint32(0xFFFFFFFF) - key_buf[j]
            _tfce_sweep(visit, visit_height, n_active, state, neighbours, E, H, fsl, dh,
                        cumulative, out[b], node, stack, roots)


@njit(**JIT)
def _label_root(x, parent):
    while parent[x] != x:
        parent[x] = parent[parent[x]]  # path halving
        x = parent[x]
    return x


@njit(parallel=True, **JIT)
def cluster_maxima_batch(stats, threshold, two_sided, neighbours, max_extent, max_mass, n_threads):
    """Largest cluster extent and mass of every row of ``stats`` beyond ``threshold``.

    Clusters hold voxels > threshold (and, when two-sided, voxels < -threshold,
    never mixed with positive ones). Mass is the sum of |statistic|.
    """
    n_maps, n_vox = stats.shape
    degree = neighbours.shape[1]
    for t in prange(n_threads):
        parent = np.empty(n_vox, np.int64)
        size = np.empty(n_vox, np.int64)
        mass = np.empty(n_vox)
        for b in range(t, n_maps, n_threads):
            row = stats[b]
            for v in range(n_vox):
                x = row[v]
                if x > threshold or (two_sided and x < -threshold):
                    parent[v] = v
                    size[v] = 1
                    mass[v] = abs(x)
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
                    mass[r] += mass[rv]
            best_e = 0
            best_m = 0.0
            for v in range(n_vox):
                if parent[v] == v:
                    best_e = max(best_e, size[v])
                    best_m = max(best_m, mass[v])
            max_extent[b] = best_e
            max_mass[b] = best_m


@njit(nogil=True, **JIT)
def stats_from_projection(proj, sum_sq, df, p, q, f_test, out):
    """t or F statistics of a group of rearrangements from their projections.

    ``proj`` is (n_maps * p, n_voxels): for map b, rows b*p .. b*p+p-1 hold the
    data's coordinates g on the basis [tested (q vectors), nuisance]; ``sum_sq``
    is each voxel's sum of squares, so RSS = sum_sq - |g|^2. Then
    t = g0 / sqrt(RSS / df) (q = 1) or F = (|g[:q]|^2 / q) / (RSS / df), and 0
    where RSS is not positive. Releases the GIL: callers run blocks of voxels
    on several threads.
    """
    n_maps, n_vox = out.shape
    fitted = np.empty(n_vox)
    effect = np.empty(n_vox)
    for b in range(n_maps):
        fitted[:] = 0.0
        effect[:] = 0.0
        for k in range(p):
            row = proj[b * p + k]
            for v in range(n_vox):
                g = np.float64(row[v])
                fitted[v] += g * g
            if k < q:
                for v in range(n_vox):
                    effect[v] = fitted[v]
        first = proj[b * p]
        for v in range(n_vox):
            ss = sum_sq[v]
            rss = ss - fitted[v]
            if not (rss > 1e-12 * ss and ss > 0):
                out[b, v] = 0.0
            elif f_test:
                out[b, v] = (effect[v] / q) / (rss / df)
            else:
                out[b, v] = first[v] / np.sqrt(rss / df)


@njit(parallel=True, **JIT)
def exceedances(values, observed, absolute, counts, maxima):
    """Add #{rows with values >= observed} per voxel to ``counts``; row maxima.

    With ``absolute`` both sides are compared in absolute value.
    """
    n_maps, n_vox = values.shape
    n_blocks = (n_vox + 4095) // 4096
    for block in prange(n_blocks):
        lo = block * 4096
        hi = min(lo + 4096, n_vox)
        for v in range(lo, hi):
            ref = abs(observed[v]) if absolute else observed[v]
            c = 0
            for b in range(n_maps):
                x = abs(values[b, v]) if absolute else values[b, v]
                if x >= ref:
                    c += 1
            counts[v] += c
    for b in prange(n_maps):
        best = -np.inf
        for v in range(n_vox):
            x = abs(values[b, v]) if absolute else values[b, v]
            if x > best:
                best = x
        maxima[b] = best
