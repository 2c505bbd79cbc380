"""Dask executor versus the threaded local executor on the R2 problem.

nilearn's MNI152 2 mm brain mask (235,375 voxels), n synthetic smooth maps,
design 1 + group + age + sex, one t contrast, both signs, exact TFCE with
6-connectivity, Freedman-Lane. For k = 1 and 2 it times the same analysis
(same seed, same chunks) with the local executor on k threads and on a Dask
``LocalCluster`` of k single-threaded worker processes, checks that the maps
are identical, and prints the speed-up ratios local / Dask (1.0 = as fast;
the target is >= 0.85, Dask within 15 % of threads). Each setting runs LO and
HI permutations, interleaved with the other executor so both see the same
machine load; the difference gives the cost per permutation, the rest is the
fixed cost (residualising; for Dask also scattering the data to every worker,
not starting the cluster). Ratios are given per permutation and projected to
5000 permutations.

    python bench/bench_dask.py [--n 240] [--n-perm 48 240] [--workers 1 2] [--repeats 2] [--out dask.json]
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=240, help="subjects (default 240)")
    parser.add_argument("--n-perm", type=int, nargs=2, default=[48, 240], metavar=("LO", "HI"),
                        help="two run lengths; their difference gives the cost per permutation "
                             "(default 48 240)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="threads (local) and worker processes (Dask) to compare (default 1 2)")
    parser.add_argument("--chunk-size", type=int, help="permutations per chunk (default: the engine's)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved timings per setting; the best is kept (default 1)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from distributed import Client, LocalCluster

    problem = make_problem(args.n, rng=0)
    tiny = make_problem(args.n, box=4, rng=0)
    _analysis(tiny, 16)  # compile / load the kernels here
    rows = []
    lo, hi = args.n_perm
    for k in args.workers:
        with LocalCluster(n_workers=k, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            _analysis(tiny, 16, executor="dask", scheduler=client)  # load the kernels in the workers
            times = {(ex, n): [] for ex in ("local", "dask") for n in (lo, hi)}
            for _ in range(args.repeats):  # interleaved, so that both see the same load
                for n in (lo, hi):
                    seconds, local = _analysis(problem, n, n_jobs=k, chunk_size=args.chunk_size)
                    times["local", n].append(seconds)
                    seconds, dask = _analysis(problem, n, executor="dask", scheduler=client,
                                              chunk_size=args.chunk_size)
                    times["dask", n].append(seconds)
        best = {key: min(value) for key, value in times.items()}
        row = {"k": k, "identical": all(np.array_equal(getattr(local[0], f), getattr(dask[0], f))
                                        for f in ("tfce_p", "tfce_p_fwe", "null_max_tfce", "p_fwe"))}
        for ex in ("local", "dask"):
            slope = (best[ex, hi] - best[ex, lo]) / (hi - lo)
            row[f"{ex}_ms_per_perm"] = 1000 * slope
            row[f"{ex}_fixed_s"] = best[ex, lo] - slope * lo
            row[f"{ex}_5000_s"] = row[f"{ex}_fixed_s"] + 5000 * slope
            row[f"{ex}_all_s"] = {str(n): times[ex, n] for n in (lo, hi)}
        row["ratio_per_perm"] = row["local_ms_per_perm"] / row["dask_ms_per_perm"]
        row["ratio_5000"] = row["local_5000_s"] / row["dask_5000_s"]
        rows.append(row)
    print(f"R2 problem: n = {args.n}, {problem['data'].shape[1]:,} voxels, exact TFCE, 6-connectivity, "
          f"two-sided, Freedman-Lane; runs of {lo} and {hi} permutations, best of {args.repeats}")
    print(f"{'k':>2}  {'local ms/perm':>13}  {'Dask ms/perm':>12}  {'local fixed s':>13}  "
          f"{'Dask fixed s':>12}  {'local/Dask per perm':>19}  {'local/Dask 5000 perms':>21}  identical")
    for r in rows:
        print(f"{r['k']:>2}  {r['local_ms_per_perm']:13.1f}  {r['dask_ms_per_perm']:12.1f}  "
              f"{r['local_fixed_s']:13.1f}  {r['dask_fixed_s']:12.1f}  {r['ratio_per_perm']:19.2f}  "
              f"{r['ratio_5000']:21.2f}  {r['identical']}")
    for r in rows[1:]:
        b = rows[0]
        print(f"scaling {b['k']} -> {r['k']} (per permutation): local x{b['local_ms_per_perm'] / r['local_ms_per_perm']:.2f}, "
              f"Dask x{b['dask_ms_per_perm'] / r['dask_ms_per_perm']:.2f}")
    print("target: local/Dask >= 0.85 (Dask within 15 % of the threaded executor). Fixed costs are per "
          "contrast: residualising, and for Dask scattering the data to every worker.")
    if args.out:
        atomic_write_text(args.out, json.dumps(
            {"rows": rows, "n": args.n, "n_perm": [lo, hi], "machine": platform.processor()}, indent=2))
    return 0 if all(row["identical"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
