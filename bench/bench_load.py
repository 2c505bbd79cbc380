"""Loading a 4D .nii.gz: time against nibabel's own read, and peak memory, also against -n.

The R2 problem's maps (nilearn's MNI152 2 mm brain mask, n smooth maps with
zeros outside the brain) are written once as a 4D ``.nii.gz``. Each measurement
runs in a fresh process; its peak resident memory above the process's own
baseline (``VmHWM`` minus the resident size after importing the libraries) is
compared with the float32 masked data matrix (n x 235,375 x 4 bytes).

Rows:

- ``nibabel``: ``np.asarray(nib.load(f).dataobj, dtype=float32)``, nibabel's
  single read of the whole 4D grid (the reference the load time is compared
  with);
- ``voxstats default mask``: :func:`voxstats.loading.load` without a mask
  (randomise's rule: non-constant and finite voxels, found in the same pass);
- ``voxstats with mask``: the same with the brain mask file;
- ``volume by volume``: how voxstats loaded 4D files before (each volume sliced
  from a fresh image, which decompresses the stream from its start), on the
  first ``--old-volumes`` volumes only (it grows with the square of the count);
- ``randomise -n K``: :func:`voxstats.randomise` on the 4D file with exact TFCE,
  peak memory above a tiny run's peak (interpreter, numba, libraries), for each
  K of ``--n-perm``.

    python bench/bench_load.py [--n 240] [--repeats 3] [--n-perm 500 5000 50000] [--threads 2]
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
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

_CHILD = r"""
import json, sys, time
import numpy as np
import nibabel as nib

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024.0

import voxstats
from voxstats.loading import load
what, path, mask, extra = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if what == "randomise":  # warm up on a tiny problem: compiled kernels loaded before the baseline
    tiny = np.random.default_rng(0).normal(size=(4, 4, 4, 8)).astype(np.float32)
    voxstats.randomise(nib.Nifti1Image(tiny, np.eye(4)), np.column_stack([np.ones(8), np.arange(8.0)]),
                       [0, 1], n_perm=8, tfce=True, rng=0, verbose=False)
before = rss("VmHWM:") if what == "randomise" else rss("VmRSS:")
start = time.perf_counter()
if what == "nibabel":
    out = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    n_values = None
elif what == "default":
    out, masker = load(path)
elif what == "mask":
    out, masker = load(path, mask)
elif what == "volumes":
    img = nib.load(path)
    m = np.asarray(nib.load(mask).dataobj) != 0
    out = np.stack([np.asarray(img.slicer[..., i].dataobj, dtype=np.float32)[m]
                    for i in range(extra["volumes"])])
elif what == "randomise":
    problem = np.load(extra["problem"])
    res = voxstats.randomise(path, problem["design"], problem["contrast"], n_perm=extra["n_perm"],
                             tfce=True, rng=0, n_jobs=extra["threads"], verbose=False)
    out = None
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mb": rss("VmHWM:") - before,
                  "shape": None if out is None else list(out.shape)}))
"""


def _child(what, path, mask, **extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = subprocess.run([sys.executable, "-c", _CHILD, what, str(path), str(mask), json.dumps(extra)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _write_problem(n, folder, tiny):
    import nibabel as nib

    from _problem import make_problem

    problem = make_problem(n, box=4 if tiny else None)
    volumes = np.zeros(problem["mask"].shape + (n,), dtype=np.float32)
    volumes[problem["mask"]] = problem["data"].T + 10.0
    path = folder / f"r2_{n}{'_tiny' if tiny else ''}.nii.gz"
    nib.save(nib.Nifti1Image(volumes, problem["affine"]), path)
    mask = folder / "mask.nii.gz"
    nib.save(nib.Nifti1Image(problem["mask"].astype(np.uint8), problem["affine"]), mask)
    np.savez(folder / "problem.npz", design=problem["design"], contrast=problem["contrast"])
    matrix_mb = n * int(problem["mask"].sum()) * 4 / 2**20
    return path, mask, folder / "problem.npz", matrix_mb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=240, help="subjects (default 240)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each load, interleaved (minimum kept)")
    parser.add_argument("--old-volumes", type=int, default=25, help="volumes read the old way (default 25)")
    parser.add_argument("--n-perm", type=int, nargs="*", default=[], help="randomise runs to measure memory at")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="a small cropped problem (for tests)")
    parser.add_argument("--folder", type=Path, help="where to write the 4D file (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path, mask, problem, matrix_mb = _write_problem(args.n, folder, args.tiny)
        print(f"{path.name}: {path.stat().st_size / 2**20:.0f} MB on disk, masked float32 matrix "
              f"{matrix_mb:.0f} MB; {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        rows = {}
        for _ in range(args.repeats):  # interleaved, so that load on the machine hits all alike
            for what in ("nibabel", "default", "mask"):
                rows.setdefault(what, []).append(_child(what, path, mask))
        rows["volumes"] = [_child("volumes", path, mask, volumes=min(args.old_volumes, args.n))]
        for k in args.n_perm:
            rows[f"randomise -n {k}"] = [_child("randomise", path, mask, problem=str(problem), n_perm=k,
                                                threads=args.threads)]
        reference = min(r["seconds"] for r in rows["nibabel"])
        labels = {"nibabel": "nibabel single read", "default": "voxstats, default mask",
                  "mask": "voxstats, with -m", "volumes": f"volume by volume ({min(args.old_volumes, args.n)} "
                  "volumes)"}
        print(f"{'what':<36}{'seconds (min)':>14}{'x nibabel':>11}{'peak MB':>9}{'peak/matrix':>13}")
        summary = []
        for key, runs in rows.items():
            seconds = min(r["seconds"] for r in runs)
            peak = min(r["peak_mb"] for r in runs)
            label = labels.get(key, key)
            print(f"{label:<36}{seconds:>14.2f}{seconds / reference:>11.2f}{peak:>9.0f}{peak / matrix_mb:>13.2f}")
            summary.append({"what": label, "seconds": seconds, "ratio_to_nibabel": seconds / reference,
                            "peak_mb": peak, "peak_over_matrix": peak / matrix_mb, "runs": runs})
        if args.out:
            args.out.write_text(json.dumps({"n": args.n, "matrix_mb": matrix_mb, "rows": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
