"""Where one exact TFCE pass spends its time: ordering, reaching the neighbours, the rest.

No hardware counters are available on the shared machine (a VM), so the pass
is taken apart by timing probes on the same permuted R2 t maps
(``bench_tfce._problem``: MNI 2 mm mask, 235,375 voxels, n = 240, both signs,
6-connectivity), each the minimum over interleaved rounds of the thread CPU
time, per map:

- ``whole``: one exact TFCE pass (``_tfce_numba.tfce_rows``, one row);
- ``order``: its first part, the signs, keys and the radix sort by |t|;
- ``scan (value order)``: only the test "is this neighbour visited, same
  sign?" for the 6 neighbours of each voxel, visited by decreasing |t| as the
  sweep does (neighbour table rows + one byte per neighbour), no union-find;
- the same scan with the voxels visited in memory order and in a random
  order: what the scan costs when the rows and bytes it reads are near each
  other, and when they are scattered without the value order's pattern;
- ``grid scan (value order)``: the same scan with the neighbours found by
  index arithmetic on the padded grid (no neighbour table).

``whole - order - scan`` is the union-find, the height intervals and the
final totals. Every scan returns the number of same-sign edges met at their
second endpoint, which must equal the number counted from the table in NumPy
(checked on every run).

    python bench/profile_tfce_sweep.py [--maps 8] [--rounds 5] [--tiny] [--out results.json]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from voxstats._tfce_numba import _active_keys, _radix_order_desc  # noqa: E402


@njit(nogil=True)
def _order(row, state, keys, visit, key_tmp, idx_tmp, hist):
    n = _active_keys(row, np.empty(0, np.bool_), True, state, keys, visit)
    _radix_order_desc(keys, n, visit, key_tmp, idx_tmp, hist)
    return n


@njit(nogil=True)
def _scan_table(visit, n, state, neighbours):
    """Same-sign neighbours already visited, found through the neighbour table."""
    degree = neighbours.shape[1]
    table = neighbours.reshape(-1)
    met = 0
    for j in range(n):
        v = visit[j]
        visited = state[v] + state[v]
        row = degree * v
        for k in range(degree):
            nb = table[row + k]
            if nb >= 0 and state[nb] == visited:
                met += 1
        state[v] = visited
    return met


@njit(nogil=True)
def _scan_grid(visit, n, state, grid_index, grid_state, offsets):
    """The same, with neighbours at fixed offsets on the padded grid (no table)."""
    for v in range(grid_index.shape[0]):
        grid_state[grid_index[v]] = state[v]
    met = 0
    for j in range(n):
        g = grid_index[visit[j]]
        visited = grid_state[g] + grid_state[g]
        for k in range(offsets.shape[0]):
            if grid_state[g + offsets[k]] == visited:
                met += 1
        grid_state[g] = visited
    return met


def same_sign_edges(row, neighbours):
    """NumPy reference: edges whose two ends are non-zero with one sign."""
    sign = np.sign(row).astype(np.int8)
    v = np.repeat(np.arange(row.size), neighbours.shape[1])
    nb = neighbours.reshape(-1)
    ok = (nb >= 0) & (sign[v] != 0)
    ok[ok] &= sign[v[ok]] == sign[nb[ok]]
    return int(ok.sum()) // 2


def _grid(mask):
    padded = np.pad(mask, 1)
    index = np.flatnonzero(padded.reshape(-1)).astype(np.int64)
    sy, sz = padded.shape[1] * padded.shape[2], padded.shape[2]
    return index, np.zeros(padded.size, np.int8), np.array([-sy, -sz, -1, 1, sz, sy], np.int64)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=240, help="subjects (default 240)")
    parser.add_argument("--maps", type=int, default=8, help="permuted maps (default 8)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--tiny", action="store_true", help="a small cropped problem (seconds; for tests)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from bench_tfce import _problem

    from voxstats import _tfce_numba as K

    load_start = os.getloadavg()
    args.chunk = args.maps
    prob, _, _, maps, graph = _problem(args)
    nbr = graph.neighbours
    n_vox = maps.shape[1]
    work8, work32, work64, hist = K.tfce_work(n_vox, nbr.shape[1])
    state = work8[:n_vox]
    keys, visit, key_tmp, idx_tmp = (work32[k * n_vox:(k + 1) * n_vox] for k in range(4))
    grid_index, grid_state, offsets = _grid(prob["mask"])
    rng = np.random.default_rng(0)
    out = np.empty_like(maps)
    empty = np.empty(0)

    def whole(i):
        K.tfce_rows(maps, i, i + 1, nbr, empty, np.empty(0, np.bool_), True, 0.5, 2.0, False, empty,
                    empty, out, work8, work32, work64, hist)

    def order(i):
        return _order(maps[i], state, keys, visit, key_tmp, idx_tmp, hist)

    def scan(i, how):
        n = order(i)  # untimed: state and visits of map i
        if how == "memory":
            visit[:n] = np.sort(visit[:n])
        elif how == "random":
            visit[:n] = rng.permutation(visit[:n])
        cpu = time.thread_time()
        met = (_scan_grid(visit, n, state, grid_index, grid_state, offsets) if how == "grid"
               else _scan_table(visit, n, state, nbr))
        return time.thread_time() - cpu, met

    probes = ["whole", "order", "scan (value order)", "scan (memory order)", "scan (random order)",
              "grid scan (value order)"]
    how = {"scan (value order)": "value", "scan (memory order)": "memory", "scan (random order)": "random",
           "grid scan (value order)": "grid"}
    best = {p: np.full(len(maps), np.inf) for p in probes}
    for i in range(len(maps)):  # compile, and check every scan against NumPy
        whole(i)
        edges = same_sign_edges(maps[i], nbr)
        for p, h in how.items():
            met = scan(i, h)[1]
            if met != edges:
                raise AssertionError(f"{p}: {met} same-sign edges met, NumPy counts {edges}")
    for r in range(args.rounds):
        names = probes[r % len(probes):] + probes[:r % len(probes)]
        for p in names:
            for i in range(len(maps)):
                if p in how:
                    t = scan(i, how[p])[0]
                else:
                    cpu = time.thread_time()
                    (whole if p == "whole" else order)(i)
                    t = time.thread_time() - cpu
                best[p][i] = min(best[p][i], t)
    load_end = os.getloadavg()

    ms = {p: 1000 * float(np.median(v)) for p, v in best.items()}
    rest = ms["whole"] - ms["order"] - ms["scan (value order)"]
    report = {"n": args.n, "n_voxels": n_vox, "maps": len(maps), "rounds": args.rounds,
              "load_start": load_start, "load_end": load_end, "cpu_ms_per_map": ms,
              "union_find_and_totals_ms": rest}
    print(f"R2 problem: {n_vox:,} voxels, {len(maps)} permuted t maps, {args.rounds} rounds; load average "
          f"{load_start[0]:.1f} at start, {load_end[0]:.1f} at end")
    print("thread CPU ms per map (median over maps of the minimum over rounds):")
    for p in probes:
        print(f"  {p:28}{ms[p]:8.2f}{100 * ms[p] / ms['whole']:7.0f} %")
    print(f"  {'rest: union-find, totals':28}{rest:8.2f}{100 * rest / ms['whole']:7.0f} %")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
