"""``qsm atlas``: published atlases and their transfer between template spaces.

``qsm atlas transfer`` is a thin layer on :func:`qsm.atlas_transfer.transfer_atlas`::

    qsm atlas transfer --atlas thomas --to MNI152NLin2009aSym --out atlases/
    qsm atlas transfer --atlas najdenovska --to-template tpl.nii.gz --to-mask mask.nii.gz \\
        --to-space MyStudy --out atlases/

It prints the QC figures and the ``[atlas]`` lines of a study config that use
the written files.
"""

from __future__ import annotations

import argparse

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``qsm atlas`` sub-commands to ``parser``."""
    from qsm.cli import _common_options, _float_in, _HelpFormatter

    sub = parser.add_subparsers(dest="atlas_command", required=True, metavar="COMMAND")
    tr = sub.add_parser(
        "transfer", formatter_class=_HelpFormatter, parents=[_common_options(top_level=False)],
        help="carry an atlas to another template space (register the templates, move labels "
             "by nearest neighbour, QC)",
        description="Carry a thalamic atlas (THOMAS or Najdenovska by name, or your labels "
                    "image) to another template space: register the atlas space's T1 template "
                    "to the target template, move the labels by nearest neighbour, and report "
                    "QC (Dice of the whole thalamus against resampling without registration, "
                    "centroid shift in mm, a PNG close-up). Writes the labels, the label table, "
                    "a _dseg.json sidecar (nuclear groups, QC, provenance) and the transforms "
                    "into --out, and prints the [atlas] lines of a study config.")
    src = tr.add_argument_group("atlas (a published one by name, or your files)")
    src.add_argument("--atlas", choices=("thomas", "najdenovska"),
                     help="published atlas (extra voxstats[atlases] or --atlas-files)")
    src.add_argument("--atlas-space", help="which packaged copy (MNI152NLin2009cAsym or "
                     "MNI152NLin6Asym), or the space of --atlas-files / --labels-img "
                     "(default: thomas MNI152NLin2009cAsym, najdenovska MNI152NLin6Asym; with "
                     "--atlas-files the space of the original release)")
    src.add_argument("--atlas-files", help="files of the original release (see "
                     "qsm.published_atlases)")
    src.add_argument("--labels-img", help="your atlas: labels image")
    src.add_argument("--label-table", help="your atlas: TSV with index, name, hemisphere")
    src.add_argument("--source-template", help="T1 template of the atlas space (default: "
                     "the packaged one)")
    src.add_argument("--source-mask", help="brain mask of --source-template")
    dst = tr.add_argument_group("target")
    dst.add_argument("--to", metavar="SPACE", help="a packaged template space "
                     "(MNI152NLin2009aSym, MNI152NLin2009cAsym, MNI152NLin6Asym)")
    dst.add_argument("--to-template", help="target T1 template image (e.g. a study template)")
    dst.add_argument("--to-mask", help="brain mask of --to-template")
    dst.add_argument("--to-space", help="space name of --to-template (BIDS label)")
    dst.add_argument("--to-resolution", type=_float_in(0.0, low_open=True), metavar="MM",
                     help="output voxel size (default: the target grid)")
    dst.add_argument("--reference-labels", help="a segmentation in the target space to compare "
                     "with (QC)")
    reg = tr.add_argument_group("registration")
    reg.add_argument("--registration-resolution", type=_float_in(0.0, low_open=True),
                     default=2.0, metavar="MM", help="working grid of the registration in mm")
    reg.add_argument("--affine-only", action="store_true", help="no nonlinear (SyN) stage")
    reg.add_argument("--seed", type=int, default=0, help="seed of the registration sampling")
    tr.add_argument("--out", required=True, metavar="DIR",
                    help="output folder (labels, label table, sidecar, transforms, QC PNG)")


def _atlas(args):
    from qsm.atlas import load_atlas
    from qsm.published_atlases import load_published_atlas

    if bool(args.atlas) == bool(args.labels_img):
        raise ValueError("give either --atlas (a published atlas) or --labels-img with "
                         "--label-table and --atlas-space.")
    if args.atlas:
        return load_published_atlas(args.atlas, space=args.atlas_space, path=args.atlas_files)
    if not (args.label_table and args.atlas_space):
        raise ValueError("--labels-img needs --label-table and --atlas-space.")
    return load_atlas(args.labels_img, args.label_table, space=args.atlas_space,
                      structure="thalamus")


def _templates(args, atlas):
    from qsm.template import load_space_template, load_template

    if bool(args.to) == bool(args.to_template):
        raise ValueError("give either --to SPACE or --to-template with --to-mask and --to-space.")
    target = (load_space_template(args.to) if args.to
              else load_template(args.to_template, args.to_mask, space=args.to_space))
    source = None
    if args.source_template:
        source = load_template(args.source_template, args.source_mask, space=atlas.space)
    return source, target


def run(args) -> int:
    """Run ``qsm atlas transfer``; returns 0 (errors are raised as one-line ValueError/OSError)."""
    from pathlib import Path

    from qsm.atlas_transfer import save_transferred, transfer_atlas

    try:
        atlas = _atlas(args)
        source, target = _templates(args, atlas)
    except ImportError as err:
        raise ValueError(str(err)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = f"space-{target.space}_atlas-{args.atlas or 'user'}"
    result = transfer_atlas(atlas, target, source_template=source,
                            reference_labels_img=args.reference_labels,
                            resolution=args.to_resolution, nonlinear=not args.affine_only,
                            registration_resolution=args.registration_resolution,
                            rng=args.seed, qc_png=out / f"{prefix}_desc-qc.png")
    paths = save_transferred(result, out, prefix=prefix)
    qc = result.qc
    print(f"{atlas.space} -> {target.space}: {qc['structure']} Dice vs direct resampling "
          f"{qc.get('dice_direct', float('nan')):.3f}, centroid shift "
          f"{qc.get('centroid_shift_mm', float('nan')):.2f} mm"
          + (f"; vs reference Dice {qc['dice_reference']:.3f}, centroid distance "
             f"{qc['centroid_distance_reference_mm']:.2f} mm" if "dice_reference" in qc else ""))
    print(f"QC close-up: {paths.get('qc_png')}")
    print("In the study config:\n[atlas]\n"
          f"labels_img = \"{paths['labels_img'].resolve()}\"\n"
          f"label_table = \"{paths['label_table'].resolve()}\"\n"
          f"space = \"{target.space}\"   # unions from {paths['sidecar'].name}")
    return 0
