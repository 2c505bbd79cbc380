"""numba kernels of TFCE and cluster labelling on a graph of voxels.

Voxels are the nodes of a graph given in CSR form (``indptr``, ``indices``),
so one kernel serves 2D and 3D grids of any connectivity and surface meshes.
The plain NumPy/SciPy twins used by the tests live in ``voxstats/_reference.py``.

The exact TFCE sweep
--------------------
Voxels are visited once, by decreasing ``|value|``, and joined to their already
visited neighbours of the same sign with a union-find. Between two visits the
clusters do not change, so each cluster's contribution over a height interval
``[h_lo, h_hi]`` is ``size**E * (F(h_hi) - F(h_lo))``; it is added lazily, at the
root of the cluster, only when the cluster changes. Every node stores an offset
and the TFCE value of a voxel is the sum of the offsets on its path to the root
(a weighted union-find), so no voxel is ever visited twice.

``F`` is ``h**(H+1)/(H+1)`` for the exact integral, or the cumulative sum of
``(k*dh)**H`` over the thresholds ``k*dh < h`` for FSL's stepped convention.
"""

import numpy as np

from ._numba import JIT, njit, prange

_MAX_DEPTH = 64  # union by size keeps trees shallower than log2(n_voxels) + 1


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
def _find(x, parent, offset, stack):
    """Root of ``x``, compressing the path while keeping every offset sum."""
    depth = 0
    root = x
    while parent[root] != root:
        stack[depth] = root
        depth += 1
        root = parent[root]
    acc = 0.0
    for j in range(depth - 1, -1, -1):
        node = stack[j]
        acc += offset[node]
        offset[node] = acc
        parent[node] = root
    return root


@njit(**JIT)
def _radix_order_desc(keys, n, order, key_buf, key_tmp, idx_tmp, hist):
    """Stable LSD radix argsort of ``keys[:n]`` (uint32) in decreasing order.

    ``order[:n]`` receives the positions 0..n-1 sorted.
    """
    for i in range(n):
        key_buf[i] = np.uint32(0xFFFFFFFF) - keys[i]
        order[i] = i
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
def _tfce_sweep(height, sign, visit, n_active, indptr, indices, E, H, fsl, dh, cumulative,
                size_pow, out, parent, size, offset, last_term, stack):
    """One TFCE pass over the voxels listed in ``visit[:n_active]``.

    ``height`` holds |value| (float64 view or float32), ``sign`` +1/-1 (0 when the
    voxel takes no part), ``visit`` the active voxels by decreasing height.
    ``out`` receives sign * TFCE (and 0 elsewhere); the other arrays are work space.
    """
    n_vox = height.shape[0]
    for i in range(n_vox):
        parent[i] = -1
        out[i] = 0.0
    for j in range(n_active):
        v = visit[j]
        h = np.float64(height[v])
        term = _height_term(h, H, fsl, dh, cumulative)
        parent[v] = v
        size[v] = 1
        offset[v] = 0.0
        last_term[v] = term
        s = sign[v]
        for k in range(indptr[v], indptr[v + 1]):
            nb = indices[k]
            if parent[nb] < 0 or sign[nb] != s:
                continue
            r = _find(nb, parent, offset, stack)
            rv = _find(v, parent, offset, stack)
            if r == rv:
                continue
            # bring both clusters up to this height, then merge the smaller into the larger
            offset[r] += size_pow[size[r]] * (last_term[r] - term)
            last_term[r] = term
            offset[rv] += size_pow[size[rv]] * (last_term[rv] - term)
            last_term[rv] = term
            if size[r] < size[rv]:
                r, rv = rv, r
            parent[rv] = r
            offset[rv] -= offset[r]
            size[r] += size[rv]
    base = _height_term(0.0, H, fsl, dh, cumulative)
    for j in range(n_active):
        v = visit[j]
        if parent[v] == v:
            offset[v] += size_pow[size[v]] * (last_term[v] - base)
    for j in range(n_active):
        v = visit[j]
        r = _find(v, parent, offset, stack)
        value = offset[v] if r == v else offset[v] + offset[r]
        out[v] = sign[v] * value


@njit(**JIT)
def tfce_graph(values, order, indptr, indices, two_sided, E, H, fsl, dh, cumulative):
    """TFCE of one float64 map on a graph; ``order`` sorts |values| decreasingly."""
    n_vox = values.shape[0]
    height = np.abs(values)
    sign = np.zeros(n_vox, dtype=np.int8)
    visit = np.empty(n_vox, dtype=np.int64)
    n_active = 0
    for j in range(n_vox):
        v = order[j]
        x = values[v]
        if x > 0 or (two_sided and x < 0):
            sign[v] = 1 if x > 0 else -1
            visit[n_active] = v
            n_active += 1
    size_pow = _size_powers(n_vox, E)
    out = np.zeros(n_vox)
    _tfce_sweep(height, sign, visit, n_active, indptr, indices, E, H, fsl, dh, cumulative,
                size_pow, out, np.empty(n_vox, np.int64), np.empty(n_vox, np.int64),
                np.empty(n_vox), np.empty(n_vox), np.empty(_MAX_DEPTH, np.int64))
    return out


@njit(**JIT)
def _size_powers(n, E):
    table = np.empty(n + 1)
    for k in range(n + 1):
        if E == 0.5:
            table[k] = np.sqrt(k)
        elif E == 1.0:
            table[k] = k
        else:
            table[k] = k ** E
    return table


@njit(parallel=True, **JIT)
def tfce_batch(stats, indptr, indices, two_sided, E, H, fsl, dh, cumulative, out, n_threads):
    """TFCE of every row of ``stats`` (float32, (n_maps, n_voxels)) into ``out``.

    Rows are dealt to threads in a fixed pattern and each thread owns its work
    space, so the result does not depend on the number of threads.
    """
    n_maps, n_vox = stats.shape
    size_pow = _size_powers(n_vox, E)
    for t in prange(n_threads):
        height = np.empty(n_vox, np.float32)
        height_bits = height.view(np.uint32)
        sign = np.empty(n_vox, np.int8)
        keys = np.empty(n_vox, np.uint32)
        active = np.empty(n_vox, np.int64)
        order = np.empty(n_vox, np.int64)
        key_buf = np.empty(n_vox, np.uint32)
        key_tmp = np.empty(n_vox, np.uint32)
        idx_tmp = np.empty(n_vox, np.int64)
        visit = np.empty(n_vox, np.int64)
        hist = np.empty(2049, np.int64)
        parent = np.empty(n_vox, np.int64)
        size = np.empty(n_vox, np.int64)
        offset = np.empty(n_vox)
        last_term = np.empty(n_vox)
        stack = np.empty(_MAX_DEPTH, np.int64)
        result = np.empty(n_vox)
        for b in range(t, n_maps, n_threads):
            row = stats[b]
            n_active = 0
            for v in range(n_vox):
                x = row[v]
                if x > 0:
                    sign[v] = 1
                elif two_sided and x < 0:
                    sign[v] = -1
                else:
                    sign[v] = 0
                height[v] = abs(x)
                if sign[v] != 0:
                    keys[n_active] = height_bits[v]
                    active[n_active] = v
                    n_active += 1
            _radix_order_desc(keys, n_active, order, key_buf, key_tmp, idx_tmp, hist)
            for j in range(n_active):
                visit[j] = active[order[j]]
            _tfce_sweep(height, sign, visit, n_active, indptr, indices, E, H, fsl, dh,
                        cumulative, size_pow, result, parent, size, offset, last_term, stack)
            for v in range(n_vox):
                out[b, v] = result[v]


@njit(**JIT)
def _label_one(row, threshold, two_sided, indptr, indices, parent, size, mass, stack, dummy):
    """Union-find labelling of voxels with value > threshold (or < -threshold)."""
    n_vox = row.shape[0]
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
        for k in range(indptr[v], indptr[v + 1]):
            nb = indices[k]
            if nb >= v or parent[nb] < 0 or (row[nb] > 0) != positive:
                continue
            r = _find(nb, parent, dummy, stack)
            rv = _find(v, parent, dummy, stack)
            if r == rv:
                continue
            if size[r] < size[rv]:
                r, rv = rv, r
            parent[rv] = r
            size[r] += size[rv]
            mass[r] += mass[rv]


@njit(parallel=True, **JIT)
def cluster_maxima_batch(stats, threshold, two_sided, indptr, indices, max_extent, max_mass, n_threads):
    """Largest cluster extent and mass of every row of ``stats`` above ``threshold``.

    Mass is the sum of |statistic| over the cluster's voxels.
    """
    n_maps, n_vox = stats.shape
    for t in prange(n_threads):
        parent = np.empty(n_vox, np.int64)
        size = np.empty(n_vox, np.int64)
        mass = np.empty(n_vox)
        dummy = np.zeros(n_vox)
        stack = np.empty(_MAX_DEPTH, np.int64)
        for b in range(t, n_maps, n_threads):
            _label_one(stats[b], threshold, two_sided, indptr, indices, parent, size, mass, stack, dummy)
            best_e = 0
            best_m = 0.0
            for v in range(n_vox):
                if parent[v] == v:
                    if size[v] > best_e:
                        best_e = size[v]
                    if mass[v] > best_m:
                        best_m = mass[v]
            max_extent[b] = best_e
            max_mass[b] = best_m


@njit(parallel=True, **JIT)
def t_from_projection(proj, sum_sq, df, p, out):
    """t statistics of a batch from its projections on the model basis.

    ``proj`` is (n_maps * p, n_voxels): for map b, rows b*p .. b*p+p-1 hold the
    data's coordinates on [tested, nuisance]; ``sum_sq`` is the voxels' total
    sum of squares. t = g0 / sqrt((sum_sq - |g|^2) / df); 0 where the residual
    sum of squares is not positive.
    """
    n_maps = out.shape[0]
    n_vox = out.shape[1]
    for v in prange(n_vox):
        ss = sum_sq[v]
        for b in range(n_maps):
            fitted = 0.0
            for k in range(p):
                g = np.float64(proj[b * p + k, v])
                fitted += g * g
            rss = ss - fitted
            if rss > 1e-12 * ss and ss > 0:
                out[b, v] = proj[b * p, v] / np.sqrt(rss / df)
            else:
                out[b, v] = 0.0


@njit(parallel=True, **JIT)
def f_from_projection(proj, sum_sq, df, p, q, out):
    """F statistics of a batch: (|g[:q]|^2 / q) / ((sum_sq - |g|^2) / df)."""
    n_maps = out.shape[0]
    n_vox = out.shape[1]
    for v in prange(n_vox):
        ss = sum_sq[v]
        for b in range(n_maps):
            fitted = 0.0
            effect = 0.0
            for k in range(p):
                g = np.float64(proj[b * p + k, v])
                fitted += g * g
                if k < q:
                    effect += g * g
            rss = ss - fitted
            if rss > 1e-12 * ss and ss > 0:
                out[b, v] = (effect / q) / (rss / df)
            else:
                out[b, v] = 0.0
