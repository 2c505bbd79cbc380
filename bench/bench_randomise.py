"""Speed and memory of voxstats' permutation engine on the R2 problem.

nilearn's MNI152 2 mm brain mask (235,375 voxels), n synthetic smooth maps,
design 1 + group + age + sex, one t contrast, both signs, exact TFCE with
6-connectivity, Freedman-Lane. Prints seconds per permutation at 1 and 2
threads and the process's peak memory relative to the float32 data matrix.

    python bench/bench_randomise.py [--n 240] [--n-perm 200] [--threads 1 2]
"""

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _problem import make_problem  # noqa: E402

import voxstats  # noqa: E402


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time_run(problem, n_perm, threads, mode):
    start = time.perf_counter()
    result = voxstats.permuted_glm(problem["data"], problem["design"], problem["contrast"],
                                   mask=problem["mask"], n_perm=n_perm, tfce=True, tfce_mode=mode,
                                   two_sided=True, rng=0, n_jobs=threads)
    return time.perf_counter() - start, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=240, help="subjects (default 240)")
    parser.add_argument("--n-perm", type=int, default=200, help="permutations per timing (default 200)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mode", default="exact", choices=["exact", "fsl"])
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    problem = make_problem(args.n, rng=0)
    data_mb = problem["data"].nbytes / 2**20
    baseline_mb = _peak_rss_mb()
    # warm-up: compile the kernels (cached on disk afterwards)
    _time_run({**problem, "data": problem["data"][:, :]}, 16, 1, args.mode)
    rows = []
    for threads in args.threads:
        seconds, result = _time_run(problem, args.n_perm, threads, args.mode)
        per_perm = seconds / result.n_perm
        rows.append({"threads": threads, "seconds": seconds, "n_perm": result.n_perm,
                     "ms_per_perm": 1000 * per_perm, "perms_5000_s": 5000 * per_perm})
    peak_mb = _peak_rss_mb()
    print(f"R2 problem: n = {args.n}, {problem['data'].shape[1]:,} voxels, TFCE {args.mode}, "
          f"6-connectivity, two-sided, Freedman-Lane")
    print(f"{'threads':>7}  {'ms/perm':>8}  {'5000 perms (s)':>14}")
    for row in rows:
        print(f"{row['threads']:>7}  {row['ms_per_perm']:8.1f}  {row['perms_5000_s']:14.1f}")
    print(f"data matrix (float32): {data_mb:.0f} MB; process peak RSS {peak_mb:.0f} MB "
          f"(before the runs {baseline_mb:.0f} MB); peak / data = {peak_mb / data_mb:.2f}, "
          f"(peak - baseline) / data = {(peak_mb - baseline_mb) / data_mb:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "peak_rss_mb": peak_mb, "data_mb": data_mb,
                                        "baseline_mb": baseline_mb, "machine": platform.processor(),
                                        "n": args.n}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
