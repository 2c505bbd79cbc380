"""Peak memory of voxstats' permutation engine against the number of permutations.

The problem of issue 12: n subjects (default 40), a million voxels of random
data (no spatial structure, no TFCE), design 1 + group, one t contrast. Each
run is a fresh process that warms the kernels up on a tiny problem, records its
resident memory, builds the data matrix and runs ``permuted_glm``; the figure
is the peak resident memory (VmHWM) above that baseline, next to the size of
the float32 data matrix. Chunks are merged as they arrive, so the peak should
not grow with ``-n``.

    python bench/bench_memory.py [--n 40] [--n-voxels 1000000] [--n-perm 256 2560 10240]
                                 [--src DIR]

``--src`` imports voxstats from another checkout (for a before/after comparison).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

_CHILD = r"""
import json, sys, time
import numpy as np

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024.0

import voxstats
voxstats.permuted_glm(np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32),
                      np.column_stack([np.ones(8), np.arange(8.0)]), [0, 1], n_perm=40, rng=0)
before = rss("VmRSS:")
args = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
data = rng.standard_normal((args["n"], args["n_voxels"]), dtype=np.float32)
group = np.repeat([0.0, 1.0], args["n"] // 2)
design = np.column_stack([np.ones(args["n"]), group])
start = time.perf_counter()
res = voxstats.permuted_glm(data, design, [0, 1], n_perm=args["n_perm"], rng=0, copy=False)
print(json.dumps({"n_perm": int(res.n_perm), "seconds": time.perf_counter() - start,
                  "peak_mb": rss("VmHWM:") - before, "data_mb": data.nbytes / 2**20}))
"""


def _run(src, n, n_voxels, n_perm):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _CHILD,
                          json.dumps({"n": n, "n_voxels": n_voxels, "n_perm": n_perm})],
                         capture_output=True, text=True, env=env, check=True,
                         cwd=src)  # python -c puts the working directory first on sys.path
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="subjects (default 40)")
    parser.add_argument("--n-voxels", type=int, default=1_000_000, help="voxels (default 1,000,000)")
    parser.add_argument("--n-perm", type=int, nargs="+", default=[256, 2560, 10240])
    parser.add_argument("--src", type=Path, default=HERE.parent, help="checkout to import voxstats from")
    args = parser.parse_args(argv)
    print(f"{args.n} subjects x {args.n_voxels:,} voxels, no TFCE, one t contrast; voxstats from {args.src}")
    print(f"{'-n':>7}  {'peak above baseline (MB)':>24}  {'data (MB)':>9}  {'peak/data':>9}  {'seconds':>8}")
    for n_perm in args.n_perm:
        row = _run(args.src, args.n, args.n_voxels, n_perm)
        print(f"{n_perm:>7}  {row['peak_mb']:24.0f}  {row['data_mb']:9.0f}  "
              f"{row['peak_mb'] / row['data_mb']:9.2f}  {row['seconds']:8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
