"""The ``voxstats`` command: ``randomise``, ``tfce`` and ``cluster``.

A thin layer over :func:`voxstats.randomise`, :func:`voxstats.tfce` and
:func:`voxstats.cluster_table.cluster_table`.  ``voxstats randomise`` takes
FSL randomise's option names and writes randomise's output names and value
conventions (1 - p, or -log10 p with ``--logp``), so a randomise user only
changes the command name. The ``randomise`` subcommand lives in
:mod:`voxstats._cli_randomise`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import logging
import platform
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

import voxstats
from voxstats.cluster_table import cluster_table
from voxstats.image import check_img, check_same_space, save_img_atomic
from voxstats.tfce import tfce

logger = logging.getLogger(__name__)

__all__ = ["main"]

_VERSIONED = ("voxstats", "numpy", "scipy", "numba", "nibabel", "pandas")


class CLIError(Exception):
    """An error reported as one line on stderr, exit code 1."""


# --------------------------------------------------------------------------- parser


def _get_parser():
    parser = argparse.ArgumentParser(
        prog="voxstats",
        description="Voxel-wise permutation inference with exact TFCE.",
    )
    parser.add_argument("--version", action="version", version=f"voxstats {voxstats.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{randomise,tfce,cluster}")

    from voxstats._cli_randomise import add_parser as add_randomise

    add_randomise(sub)

    t = sub.add_parser("tfce", help="TFCE transform of a map (like fslmaths -tfce)",
                       description="Threshold-free cluster enhancement of one statistic map.")
    t.add_argument("input", metavar="IN", help="3D statistic map")
    t.add_argument("output", metavar="OUT", help="output TFCE map")
    t.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=6)
    t.add_argument("-E", dest="E", type=float, default=0.5, help="extent power (default 0.5)")
    t.add_argument("-H", dest="H", type=float, default=2.0, help="height power (default 2)")
    t.add_argument("--mode", choices=("exact", "fsl"), default="exact")
    t.add_argument("--dh", type=float, help="fixed step (fsl mode)")
    t.add_argument("--mask", help="mask image (voxels outside are 0)")
    t.add_argument("--positive-only", action="store_true",
                   help="enhance positive values only, as fslmaths -tfce (default: both signs)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing output")
    t.set_defaults(func=_run_tfce)

    c = sub.add_parser("cluster", help="cluster table of a statistic map and a p map",
                       description="Table the clusters of a statistic map (TSV).")
    c.add_argument("input", metavar="STAT", help="3D statistic map")
    c.add_argument("--p", dest="p_img", metavar="PMAP", help="p map (randomise's 1-p by default)")
    c.add_argument("--p-convention", choices=("1-p", "p", "logp"), default="1-p",
                   help="how PMAP stores p (default 1-p; logp for --logp outputs)")
    c.add_argument("--alpha", type=float, default=0.05, help="significance level on PMAP (default 0.05)")
    c.add_argument("--threshold", type=float, help="cluster-forming threshold on |STAT|")
    c.add_argument("--sign", choices=("pos", "neg", "both"), default="pos")
    c.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=26)
    c.add_argument("--min-size", type=int, default=1, help="smallest cluster kept (voxels)")
    c.add_argument("--atlas", metavar="LABELS", help="integer atlas image")
    c.add_argument("--atlas-labels", metavar="LUT", help="TSV with 'index' and 'name' columns")
    c.add_argument("-o", "--output", metavar="TSV", help="output table (default: stdout)")
    c.add_argument("--out-index", metavar="IMG", help="write the cluster index image")
    c.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    c.set_defaults(func=_run_cluster)
    return parser


# --------------------------------------------------------------------------- helpers


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions():
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = getattr(sys.modules.get(name), "__version__", None)
    out["voxstats"] = voxstats.__version__
    return out


def _check_outputs(paths, overwrite):
    if overwrite:
        return
    for path in paths:
        if Path(path).exists():
            raise CLIError(f"Output file {path} exists; use --overwrite to replace it.")


def _run_tfce(args):
    _check_outputs([args.output], args.overwrite)
    if args.dh is not None and args.mode != "fsl":
        raise CLIError("--dh sets a fixed step, which needs --mode fsl.")
    img = check_img(args.input, name="IN", ndim=3)
    mask = None
    if args.mask:
        mask_img = check_img(args.mask, name="--mask", ndim=3)
        check_same_space(img, mask_img, args.input, args.mask)
        mask = np.asarray(mask_img.dataobj) > 0
    data = np.asarray(img.dataobj, dtype=np.float64)
    out = tfce(data, mask=mask, connectivity=args.connectivity, E=args.E, H=args.H,
                        mode=args.mode, dh=args.dh, two_sided=not args.positive_only)
    out_img = nib.Nifti1Image(np.asarray(out, dtype=np.float32), img.affine, img.header)
    out_img.set_data_dtype(np.float32)
    save_img_atomic(out_img, args.output)
    return 0


def _run_cluster(args):
    outs = [p for p in (args.output, args.out_index) if p]
    _check_outputs(outs, args.overwrite)
    if args.atlas_labels and not args.atlas:
        raise CLIError("--atlas-labels needs --atlas.")
    res = cluster_table(
        args.input, p_img=args.p_img, p_convention=args.p_convention, alpha=args.alpha,
        threshold=args.threshold, sign=args.sign, connectivity=args.connectivity,
        min_size=args.min_size, atlas_img=args.atlas, atlas_labels=args.atlas_labels,
    )
    if args.out_index:
        save_img_atomic(res.labels_img, args.out_index)
    if args.output:
        res.to_tsv(args.output)
    else:
        sys.stdout.write(res.table.to_csv(sep="\t", index=False, float_format="%.6g"))
    return 0


# --------------------------------------------------------------------------- entry point


def main(argv=None):
    """Run the ``voxstats`` command.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after the program name (``sys.argv[1:]`` when omitted).

    Returns
    -------
    int
        0 on success, 1 on a reported error (one line on stderr); argparse
        exits with 2 on a usage error.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _get_parser().parse_args(argv)
    args.argv = argv
    if not getattr(args, "quiet", False):
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (CLIError, ValueError, OSError) as err:
        print(f"voxstats {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
