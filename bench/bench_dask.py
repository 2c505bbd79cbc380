"""Dask executor versus the threaded local executor on the R2 problem.

nilearn's MNI152 2 mm brain mask (235,375 voxels), n synthetic smooth maps,
design 1 + group + age + sex, one t contrast, both signs, exact TFCE with
6-connectivity, Freedman-Lane. For k = 1 and 2 it times the same analysis
(same seed, same chunks) with the local executor on k threads and on a Dask
``LocalCluster`` of k single-threaded worker processes, checks that the maps
are identical, and prints the speed-up ratios local / Dask (1.0 = as fast;
the target is >= 0.85, Dask within 15 % of threads). The Dask timing includes
scattering the residualised data to the workers, not starting the cluster.

    python bench/bench_dask.py [--n 240] [--n-perm 192] [--workers 1 2] [--out dask.json]
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _problem import make_problem  # noqa: E402

import voxstats  # noqa: E402
from voxstats.image import atomic_write_text  # noqa: E402


def _analysis(problem, n_perm, **kwargs):
    start = time.perf_counter()
    result = voxstats.permuted_glm(problem["data"], problem["design"], problem["contrast"],
                                   mask=problem["mask"], n_perm=n_perm, tfce=True, two_sided=True,
                                   rng=0, verbose=False, **kwargs)
    return time.perf_counter() - start, result


def _best(problem, n_perm, repeats, **kwargs):
    runs = [_analysis(problem, n_perm, **kwargs) for _ in range(repeats)]
    return min(r[0] for r in runs), runs[0][1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=240, help="subjects (default 240)")
    parser.add_argument("--n-perm", type=int, default=192, help="permutations per timing (default 192)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="threads (local) and worker processes (Dask) to compare (default 1 2)")
    parser.add_argument("--chunk-size", type=int, help="permutations per chunk (default: the engine's)")
    parser.add_argument("--repeats", type=int, default=1, help="timings per setting; the best is kept")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from distributed import Client, LocalCluster

    problem = make_problem(args.n, rng=0)
    tiny = make_problem(args.n, box=4, rng=0)
    _analysis(tiny, 16)  # compile / load the kernels here
    rows = []
    for k in args.workers:
        local_s, local = _best(problem, args.n_perm, args.repeats, n_jobs=k, chunk_size=args.chunk_size)
        with LocalCluster(n_workers=k, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            _analysis(tiny, 16, executor="dask", scheduler=client)  # load the kernels in the workers
            dask_s, dask = _best(problem, args.n_perm, args.repeats, executor="dask", scheduler=client,
                                 chunk_size=args.chunk_size)
        identical = all(np.array_equal(getattr(local[0], f), getattr(dask[0], f))
                        for f in ("tfce_p", "tfce_p_fwe", "null_max_tfce", "p_fwe"))
        rows.append({"k": k, "local_s": local_s, "dask_s": dask_s, "ratio": local_s / dask_s,
                     "identical": identical, "n_perm": local.n_perm})
    print(f"R2 problem: n = {args.n}, {problem['data'].shape[1]:,} voxels, {args.n_perm} permutations, "
          "exact TFCE, 6-connectivity, two-sided, Freedman-Lane")
    print(f"{'k':>2}  {'local k threads (s)':>19}  {'Dask k workers (s)':>18}  {'local/Dask':>10}  "
          f"{'identical':>9}")
    for row in rows:
        print(f"{row['k']:>2}  {row['local_s']:19.1f}  {row['dask_s']:18.1f}  {row['ratio']:10.2f}  "
              f"{str(row['identical']):>9}")
    if len(rows) > 1:
        base = rows[0]
        for row in rows[1:]:
            print(f"scaling {base['k']} -> {row['k']}: local x{base['local_s'] / row['local_s']:.2f}, "
                  f"Dask x{base['dask_s'] / row['dask_s']:.2f}")
    print("target: local/Dask >= 0.85 (Dask within 15 % of the threaded executor)")
    if args.out:
        atomic_write_text(args.out, json.dumps(
            {"rows": rows, "n": args.n, "n_perm": args.n_perm, "machine": platform.processor()}, indent=2))
    return 0 if all(row["identical"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
