"""Speed and memory of voxstats' permutation engine on the R2 problem.

nilearn's MNI152 2 mm brain mask (235,375 voxels), n synthetic smooth maps,
design 1 + group + age + sex, one t contrast, both signs, exact TFCE with
6-connectivity, Freedman-Lane. Prints milliseconds per permutation at 1 and 2
threads and the peak memory relative to the float32 data matrix.

Each measurement runs in a fresh process that loads the data matrix from disk,
after a warm-up on a tiny problem (which loads the compiled kernels), so its
peak resident memory (VmHWM) counts only the data and the engine:
peak / data = (VmHWM - RSS before loading) / size of the float32 matrix.
The per-permutation time is the slope between a short and a long run, which
removes the fixed costs (residualising, the observed maps, process start).

    python bench/bench_randomise.py [--n 240] [--n-perm 96 480] [--threads 1 2]

``--resolution 1`` runs the same problem on nilearn's 1 mm brain mask
(1,882,989 voxels; the float32 data are 1.7 GB at n = 240 and the problem
takes a few minutes to build): ``--n-perm 32 288`` gives the per-permutation
time from 256 permutations, and "5000 perms" extrapolates it.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

_CHILD = r"""
import json, sys, time
import numpy as np

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024.0
import voxstats
# warm up on a tiny problem so that the compiled kernels are loaded before the baseline
_tiny = np.ones((4, 4, 4), dtype=bool)
voxstats.permuted_glm(np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32),
                      np.column_stack([np.ones(8), np.arange(8.0)]), [0, 1], mask=_tiny, n_perm=8,
                      tfce=True, rng=0)
before = rss("VmRSS:")
problem = np.load(sys.argv[1])
data = np.ascontiguousarray(problem["data"], dtype=np.float32)
args = json.loads(sys.argv[2])
start = time.perf_counter()
cpu = time.process_time()
result = voxstats.permuted_glm(data, problem["design"], problem["contrast"], mask=problem["mask"],
                               n_perm=args["n_perm"], tfce=True, tfce_mode=args["mode"],
                               two_sided=True, rng=0, n_jobs=args["threads"], copy=False)
print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                  "n_perm": result.n_perm, "peak_mb": rss("VmHWM:") - before,
                  "data_mb": data.nbytes / 2**20}))
"""


def _run(path, n_perm, threads, mode):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path),
                          json.dumps({"n_perm": n_perm, "threads": threads, "mode": mode})],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=240, help="subjects (default 240)")
    parser.add_argument("--n-perm", type=int, nargs=2, default=[96, 480], metavar=("SHORT", "LONG"),
                        help="permutations of the short and the long run (default 96 480)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mode", default="exact", choices=["exact", "fsl"])
    parser.add_argument("--resolution", type=int, default=2, choices=[1, 2],
                        help="mm of nilearn's MNI152 brain mask (default 2; 1: 1.9 M voxels)")
    parser.add_argument("--tiny", action="store_true", help="a small cropped problem (for tests)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from _problem import make_problem

    problem = make_problem(args.n, resolution=args.resolution, rng=0, **({"box": 8} if args.tiny else {}))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "problem.npz"
        np.savez(path, data=problem["data"], design=problem["design"], contrast=problem["contrast"],
                 mask=problem["mask"])
        _run(path, 8, 1, args.mode)  # compile the kernels once (numba caches them on disk)
        rows = []
        load_start = os.getloadavg()[0]
        for threads in args.threads:
            short = _run(path, args.n_perm[0], threads, args.mode)
            long = _run(path, args.n_perm[1], threads, args.mode)
            extra = long["n_perm"] - short["n_perm"]
            per_perm = (long["seconds"] - short["seconds"]) / extra
            rows.append({"threads": threads, "ms_per_perm": 1000 * per_perm,
                         "cpu_ms_per_perm": 1000 * (long["cpu_seconds"] - short["cpu_seconds"]) / extra,
                         "seconds_5000": 5000 * per_perm + short["seconds"] - short["n_perm"] * per_perm,
                         "peak_over_data": long["peak_mb"] / long["data_mb"],
                         "peak_mb": long["peak_mb"], "data_mb": long["data_mb"]})
    print(f"R2 problem: n = {args.n}, {problem['data'].shape[1]:,} voxels, TFCE {args.mode}, "
          "6-connectivity, two-sided, Freedman-Lane")
    print(f"{'threads':>7}  {'ms/perm':>8}  {'CPU ms/perm':>11}  {'5000 perms (s)':>14}  {'peak/data':>9}")
    for row in rows:
        print(f"{row['threads']:>7}  {row['ms_per_perm']:8.1f}  {row['cpu_ms_per_perm']:11.1f}  "
              f"{row['seconds_5000']:14.1f}  {row['peak_over_data']:9.2f}")
    print(f"data matrix (float32): {rows[0]['data_mb']:.0f} MB; peak = data + engine, per process")
    load_end = os.getloadavg()[0]
    print(f"load average (1 min) {load_start:.1f} at start, {load_end:.1f} at end; {os.cpu_count()} CPUs")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "n": args.n, "resolution": args.resolution,
                                        "machine": platform.processor(), "cpus": os.cpu_count(),
                                        "load_average": [load_start, load_end]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
