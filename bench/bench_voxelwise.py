"""Cost per permutation of voxel-wise regressors (randomise --vxl) against the shared-design engine.

n subjects (default 40), random data on a cube of voxels, design 1 + group +
a voxel-wise regressor (grey matter, say), one t contrast on the group, no
TFCE. The same problem runs through the shared-design engine (the regressor
replaced by its mean over voxels) and through the voxel-wise path. The time per
permutation is the slope between a short and a long run (fixed costs removed),
the minimum over ``--repeat`` interleaved rounds, on one thread.

    python bench/bench_voxelwise.py [--n 40] [--n-voxels 50000] [--n-perm 64 320] [--repeat 3]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import voxstats  # noqa: E402


def _problem(n, n_voxels, seed=0):
    rng = np.random.default_rng(seed)
    group = np.repeat([0.0, 1.0], n // 2)
    ev = rng.uniform(0.2, 0.8, (n, n_voxels)).astype(np.float32)
    data = (rng.standard_normal((n, n_voxels)) + 2.0 * ev + 0.3 * group[:, None]).astype(np.float32)
    design = np.column_stack([np.ones(n), group, ev.mean(axis=1)])
    return data, design, ev


def _seconds(data, design, ev, n_perm, voxelwise):
    start = time.perf_counter()
    voxstats.permuted_glm(data, design, [0, 1, 0], n_perm=n_perm, rng=0, n_jobs=1,
                          voxelwise_evs={2: ev} if voxelwise else None)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--n-voxels", type=int, default=50_000)
    parser.add_argument("--n-perm", type=int, nargs=2, default=[64, 320], metavar=("SHORT", "LONG"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    data, design, ev = _problem(args.n, args.n_voxels)
    _seconds(data, design, ev, 8, True)  # compile the kernels
    _seconds(data, design, ev, 8, False)
    slopes = {False: [], True: []}
    short, long = args.n_perm
    for _ in range(args.repeat):
        for voxelwise in (False, True):
            t_short = _seconds(data, design, ev, short, voxelwise)
            t_long = _seconds(data, design, ev, long, voxelwise)
            slopes[voxelwise].append((t_long - t_short) / (long - short))
    shared, vxl = min(slopes[False]), min(slopes[True])
    print(f"{args.n} subjects x {args.n_voxels:,} voxels, design 1 + group + EV, one t contrast, no TFCE, "
          f"1 thread (min of {args.repeat})")
    print(f"shared design (one matrix product): {1000 * shared:8.2f} ms per permutation")
    print(f"voxel-wise EV (--vxl):              {1000 * vxl:8.2f} ms per permutation")
    print(f"ratio voxel-wise / shared:          {vxl / shared:8.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
