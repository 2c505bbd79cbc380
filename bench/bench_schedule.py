"""Permutation schedules: memory, generation speed, and exhaustive runs end to end.

1. Memory: peak resident memory (VmHWM minus the RSS after imports) of a fresh
   process that builds a schedule and reads all its rows in chunks of 256 (as
   the engine does), for 240 subjects and 1,000 / 10,000 / 100,000 rearrangements.
   Before schedules were generated on demand, 100,000 rows were materialised
   (int64 permutations and int8 signs of 240 subjects: 792 MB measured).
2. Generation speed: milliseconds per 1000 rows for each method ('enumerate',
   'shuffle', 'sample') and for a family-structured tree of 240 subjects.
3. Exhaustive end to end: ``permuted_glm(n_perm=0)`` on a 4+4 design (t, 70
   distinct relabellings) and on three groups of 3 (F, 1680), on a
   ``--shape`` volume; with ``--randomise PATH`` the same data through FSL
   randomise (``-n 0``), timed the same way (wall seconds, best of ``--repeats``).

    python bench/bench_schedule.py [--shape 40 40 40] [--repeats 3] [--randomise /path/to/randomise]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_MEMORY_CHILD = r"""
import json, sys
import numpy as np
from voxstats.permutation import make_schedule

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024.0

make_schedule(240, 64, rng=0).rows(0, 64)  # imports and first-call costs before the baseline
before = rss("VmRSS:")
n_perm = int(sys.argv[1])
schedule = make_schedule(240, n_perm, design=np.repeat([[0.0], [1.0]], 120, axis=0), sign_flip=False, rng=0)
for start in range(0, n_perm, 256):
    perms, signs = schedule.rows(start, min(start + 256, n_perm))
print(json.dumps({"n_perm": n_perm, "peak_mb": rss("VmHWM:") - before, "method": schedule.method}))
"""


def memory(n_perms):
    print("1. peak memory of building + reading a schedule, 240 subjects (MB above baseline)")
    for n_perm in n_perms:
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(n_perm)], capture_output=True,
                             text=True, check=True)
        result = json.loads(out.stdout)
        materialised = n_perm * 240 * 9 / 2**20
        print(f"   n_perm {n_perm:>7}: {result['peak_mb']:7.1f} MB ({result['method']}); "
              f"materialised rows would hold {materialised:7.1f} MB")


def _rate(schedule, rows=1000, repeats=3):
    best = np.inf
    for r in range(repeats):
        start = time.perf_counter()
        for lo in range(r * rows, (r + 1) * rows, 32):  # the engine asks for groups of 32
            schedule.rows(lo, lo + 32)
        best = min(best, time.perf_counter() - start)
    return best * 1000 * 1000 / rows


def speed():
    from voxstats.families import blocks_from_families
    from voxstats.permutation import make_schedule

    print("2. generation speed (ms per 1000 rows, groups of 32, best of 3)")
    rng = np.random.default_rng(0)
    cases = {
        "enumerate, 3 groups of 4 (34650 rows)": make_schedule(12, 0, design=np.repeat(np.eye(3), 4, axis=0)),
        "shuffle, 10+10 groups (184756 distinct)": make_schedule(20, 10_000, design=np.repeat([[0], [1]], 10, 0),
                                                                 rng=0),
        "shuffle, 12 subjects free, -n 2e9": make_schedule(12, 2_000_000_000, rng=0),
        "sample, 240 subjects, two groups": make_schedule(240, 10_000, design=np.repeat([[0], [1]], 120, 0), rng=0),
        "sample, 240 subjects + sign flips": make_schedule(240, 10_000, sign_flip=True, rng=0),
    }
    # a family-structured sample of 240: 40 MZ pairs, 30 DZ pairs, 20 sibships of 3, 40 singletons
    subject, mother, father, zyg = [], [], [], []
    for fam, (size, kind) in enumerate([(2, "MZ")] * 40 + [(2, "DZ")] * 30 + [(3, "NotTwin")] * 20
                                       + [(1, "NotTwin")] * 40):
        for _ in range(size):
            subject.append(len(subject))
            mother.append(f"m{fam}")
            father.append(f"f{fam}")
            zyg.append(kind)
    eb = blocks_from_families(subject, mother, father, zyg)
    design = rng.integers(0, 2, size=(240, 1)).astype(float)
    cases["sample, 240 subjects in families (HCP-like tree)"] = make_schedule(
        240, 10_000, exchangeability_blocks=eb, design=design, rng=0)
    for name, schedule in cases.items():
        print(f"   {name:<50} {_rate(schedule):8.2f} ms  [{schedule.method}]")


def _volume_problem(n_groups, per_group, shape, rng):
    n = n_groups * per_group
    data = rng.standard_normal((n,) + tuple(shape)).astype(np.float32)
    design = np.repeat(np.eye(n_groups), per_group, axis=0)
    return data, design


def end_to_end(shape, repeats, randomise):
    import nibabel as nib

    import voxstats

    print(f"3. exhaustive runs end to end, {shape[0]}x{shape[1]}x{shape[2]} volume, best of {repeats} (s)")
    rng = np.random.default_rng(1)
    cases = [("4+4 groups, t", 2, 4, {"contrasts": [1, -1]}, "1 -1"),
             ("3 groups of 3, F", 3, 3, {"contrasts": {"a-b": [1, -1, 0], "b-c": [0, 1, -1]},
                                          "f_contrasts": {"F": [[1, -1, 0], [0, 1, -1]]}}, None)]
    voxstats.permuted_glm(rng.standard_normal((8, 50)), np.repeat(np.eye(2), 4, 0), [1, -1], n_perm=0)
    for name, groups, per, kwargs, _ in cases:
        data, design = _volume_problem(groups, per, shape, rng)
        matrix = data.reshape(data.shape[0], -1)
        contrasts = kwargs["contrasts"]
        best, res = np.inf, None
        for _ in range(repeats):
            start = time.perf_counter()
            res = voxstats.permuted_glm(matrix, design, contrasts, f_contrasts=kwargs.get("f_contrasts"),
                                        n_perm=0, two_sided=False, rng=0)
            best = min(best, time.perf_counter() - start)
        line = f"   {name:<18} voxstats {best:6.2f} s ({res.n_perm} rearrangements)"
        if randomise:
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                nib.save(nib.Nifti1Image(np.moveaxis(data, 0, -1), np.eye(4)), tmp / "data.nii.gz")
                nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), np.eye(4)), tmp / "mask.nii.gz")
                _vest(tmp / "design.mat", design)
                con = np.array(list(contrasts.values()) if isinstance(contrasts, dict) else [contrasts], float)
                _vest(tmp / "design.con", con)
                argv = [randomise, "-i", str(tmp / "data.nii.gz"), "-o", str(tmp / "r"), "-d",
                        str(tmp / "design.mat"), "-t", str(tmp / "design.con"), "-m",
                        str(tmp / "mask.nii.gz"), "-n", "0", "-x", "--quiet"]
                if "f_contrasts" in kwargs:
                    _vest(tmp / "design.fts", np.ones((1, 2)))
                    argv += ["-f", str(tmp / "design.fts")]
                rbest = np.inf
                for _ in range(repeats):
                    start = time.perf_counter()
                    subprocess.run(argv, check=True, capture_output=True,
                                   env={"FSLOUTPUTTYPE": "NIFTI_GZ", "PATH": "/usr/bin:/bin"})
                    rbest = min(rbest, time.perf_counter() - start)
            line += f"; randomise {rbest:6.2f} s; ratio randomise/voxstats {rbest / best:5.2f}"
        print(line)


def _vest(path, matrix):
    from voxstats.design_files import write_vest

    write_vest(path, matrix, kind={".mat": "mat", ".con": "con", ".fts": "fts"}[path.suffix])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 40, 40])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-perm", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--randomise", help="path to FSL randomise, to time it on the same data")
    parser.add_argument("--only", choices=["memory", "speed", "end-to-end"])
    args = parser.parse_args()
    if args.only in (None, "memory"):
        memory(args.n_perm)
    if args.only in (None, "speed"):
        speed()
    if args.only in (None, "end-to-end"):
        end_to_end(args.shape, args.repeats, args.randomise)


if __name__ == "__main__":
    main()
