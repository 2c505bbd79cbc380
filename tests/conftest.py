"""Fixtures shared by the voxstats and qsm tests: the corpus of broken inputs.

``broken_corpus`` (session scope) builds, once, a small valid study (a 4D
image of 8 subjects on a 4x5x3 grid, its 3D volumes and list, a design,
contrasts, blocks, a statistic map, a p map with its sidecar, an atlas and its
look-up table) and dozens of broken files, each tagged with the *slots* where
it must be refused:

``img3d``
    Any argument taking one 3D image (tfce IN, cluster STAT/--p/--atlas, masks,
    list entries, a subject's χ map): unreadable, truncated, empty, text,
    complex, RGB, NaN affine, 2D, 4D, a folder, a missing file.
``img4d``
    The 4D input of ``randomise -i``: the same faults in 4D, and a 3D image.
``grid3d``
    A 3D image that must share the study's grid (masks, --p, --atlas, list
    entries): another shape, another affine.
``mask``
    Masks only: nothing finite and non-zero (all zero, all NaN).
``data_in_mask``
    Subjects' data with NaN inside a given mask.
``list``
    Image lists: missing entries, an entry only in the working directory, no
    entries, binary, one subject, entries on another grid or unreadable.
``design``, ``tcon``, ``fcon``, ``blocks``, ``lut``, ``pmap``
    Design matrices, t and F contrasts, exchangeability blocks, atlas look-up
    tables, p maps whose values cannot be p.

Use ``broken_corpus.cases("img3d", "grid3d")`` for the files broken in any of
those slots and ``broken_corpus.study`` for the valid files to combine them
with.
"""

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (4, 5, 3)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
N_SUBJECTS = 8


@dataclass(frozen=True)
class Broken:
    """One broken input file and where it must be refused."""

    name: str
    path: Path
    slots: frozenset
    why: str
    culprit: str = ""  # the file a message must name, when not this one (a list's bad entry)

    @property
    def names(self):
        """File names an error message may name: this file's, and its culprit's."""
        return tuple(n for n in (self.path.name, self.culprit) if n)


@dataclass
class Corpus:
    """The broken files and the valid study they are combined with."""

    root: Path
    study: dict = field(default_factory=dict)
    broken: dict = field(default_factory=dict)

    def add(self, name, path, slots, why, culprit=""):
        self.broken[name] = Broken(name, Path(path), frozenset(slots.split()), why, culprit)

    def cases(self, *slots):
        """The broken files whose slots include any of ``slots``, by name."""
        return [b for b in self.broken.values() if b.slots & set(slots)]


def _save(data, path, affine=AFFINE, dtype=None):
    img = nib.Nifti1Image(np.asarray(data), affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    nib.save(img, path)
    return path


def _raw_nifti(path, data, edit):
    """An uncompressed NIfTI whose header fields are set by ``edit(header)`` (bypassing nibabel's checks)."""
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), AFFINE)
    header = img.header.copy()
    header.set_data_offset(352)
    edit(header)
    with open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\x00" * 4 + np.asarray(data, dtype=np.float32).tobytes(order="F"))
    return path


def build_broken_corpus(root):
    """Build the study and the broken files under ``root`` (see the module docstring)."""
    root = Path(root)
    rng = np.random.default_rng(12)
    c = Corpus(root)
    good = root / "good"
    good.mkdir(parents=True)
    volumes = (rng.normal(size=SHAPE + (N_SUBJECTS,)) + 10).astype(np.float32)
    volumes[0, 0, 0] = 0.0  # constant: outside the default mask
    c.study["4d"] = _save(volumes, good / "all.nii.gz")
    subjects = [_save(volumes[..., i], good / f"sub-{i:02d}.nii.gz") for i in range(N_SUBJECTS)]
    c.study["subjects"] = subjects
    (good / "list.txt").write_text("\n".join(p.name for p in subjects) + "\n")
    c.study["list"] = good / "list.txt"
    # not broken: a byte-order mark, a comment, blank lines and Windows line ends are read
    (good / "bom_list.txt").write_bytes(b"\xef\xbb\xbf# subjects\r\n\r\n"
                                        + "".join(f"{p.name}\r\n" for p in subjects).encode())
    c.study["bom_list"] = good / "bom_list.txt"
    mask = np.ones(SHAPE, np.uint8)
    mask[0, 0, 0] = 0
    c.study["mask"] = _save(mask, good / "mask.nii.gz")
    group = np.repeat([1.0, 0.0], N_SUBJECTS // 2)
    design = np.column_stack([group, 1 - group])
    c.study["design"] = good / "design.mat"
    c.study["design"].write_text(f"/NumWaves 2\n/NumPoints {N_SUBJECTS}\n/Matrix\n"
                                 + "".join(f"{a:g} {b:g}\n" for a, b in design))
    c.study["design_array"] = design
    c.study["tcon"] = good / "design.con"
    c.study["tcon"].write_text("/NumWaves 2\n/NumContrasts 2\n/Matrix\n1 -1\n-1 1\n")
    c.study["fcon"] = good / "design.fts"
    c.study["fcon"].write_text("/NumWaves 2\n/NumContrasts 1\n/Matrix\n1 1\n")
    c.study["blocks"] = good / "design.grp"
    c.study["blocks"].write_text("/NumWaves 1\n/NumPoints 8\n/Matrix\n" + "1\n2\n" * 4)
    stat = rng.normal(size=SHAPE).astype(np.float32) * 3
    c.study["stat"] = _save(stat, good / "tstat.nii.gz")
    c.study["pmap"] = _save(rng.uniform(size=SHAPE).astype(np.float32), good / "pmap.nii.gz")
    (good / "pmap.json").write_text(json.dumps({"p_convention": "p"}))
    c.study["atlas"] = _save(rng.integers(0, 3, SHAPE).astype(np.int16), good / "atlas.nii.gz")
    c.study["lut"] = good / "atlas.tsv"
    c.study["lut"].write_text("index\tname\n1\tleft\n2\tright\n")

    bad = root / "broken"
    bad.mkdir()
    three, four = volumes[..., 0], volumes
    # ---- unreadable or unusable images, in 3D and 4D
    for dims, data in (("3d", three), ("4d", four)):
        slot = "img3d" if dims == "3d" else "img4d"
        valid = _save(data, bad / f"valid_{dims}.nii.gz")
        blob = valid.read_bytes()
        (bad / f"truncated_{dims}.nii.gz").write_bytes(blob[: len(blob) // 2])
        c.add(f"truncated_{dims}.nii.gz", bad / f"truncated_{dims}.nii.gz", slot, "compressed stream cut")
        plain = _save(data, bad / f"plain_{dims}.nii")
        (bad / f"truncated_{dims}.nii").write_bytes(plain.read_bytes()[: 352 + data.nbytes // 2])
        c.add(f"truncated_{dims}.nii", bad / f"truncated_{dims}.nii", slot, "uncompressed data cut")
        plain.unlink()
        valid.unlink()
        (bad / f"garbage_{dims}.nii.gz").write_bytes(gzip.compress(blob[:352])[:40] + b"\x00garbage" * 20)
        c.add(f"garbage_{dims}.nii.gz", bad / f"garbage_{dims}.nii.gz", slot, "corrupt gzip stream")
        c.add(f"complex_{dims}.nii.gz", _save(data.astype(np.complex64), bad / f"complex_{dims}.nii.gz"),
              slot, "complex values")
        rgb = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        c.add(f"rgb_{dims}.nii", _save(rgb, bad / f"rgb_{dims}.nii"), slot, "RGB values")

        def nan_sform(header):
            header["sform_code"], header["qform_code"] = 1, 0
            header["srow_x"] = [np.nan, 0, 0, 0]

        c.add(f"nan_affine_{dims}.nii", _raw_nifti(bad / f"nan_affine_{dims}.nii", data, nan_sform), slot,
              "NaN in the affine")

        def nan_qform(header):
            header["sform_code"], header["qform_code"] = 0, 1
            header["quatern_b"] = np.nan

        c.add(f"nan_qform_{dims}.nii", _raw_nifti(bad / f"nan_qform_{dims}.nii", data, nan_qform), slot,
              "NaN quaternion")
    for name, content in (("empty.nii.gz", b""), ("empty.nii", b""), ("text.nii.gz", b"subject,age\n1,30\n"),
                          ("text.nii", b"not an image at all\n"), ("header_only.nii.gz", None)):
        path = bad / name
        path.write_bytes(content if content is not None else gzip.compress(b"\x5c\x01" + b"\x00" * 90))
        c.add(name, path, "img3d img4d", "not an image")
    (bad / "folder.nii.gz").mkdir()
    c.add("folder.nii.gz", bad / "folder.nii.gz", "img3d img4d", "a folder")
    c.add("missing.nii.gz", bad / "missing.nii.gz", "img3d img4d", "does not exist")
    c.add("2d.nii.gz", _save(three[..., 0], bad / "2d.nii.gz"), "img3d img4d", "2D")
    c.add("4d_as_3d.nii.gz", _save(four[..., :3], bad / "4d_as_3d.nii.gz"), "img3d", "4D where 3D is expected")
    c.add("3d_as_4d.nii.gz", _save(three, bad / "3d_as_4d.nii.gz"), "img4d", "3D where 4D is expected")
    c.add("one_volume.nii.gz", _save(four[..., :1], bad / "one_volume.nii.gz"), "img4d", "one subject")
    # ---- valid images on another grid
    c.add("other_shape.nii.gz", _save(np.ones((4, 5, 4), np.float32), bad / "other_shape.nii.gz"), "grid3d",
          "another shape")
    c.add("other_affine.nii.gz", _save(np.ones(SHAPE, np.float32), bad / "other_affine.nii.gz",
                                       np.diag([3.0, 3.0, 3.0, 1.0])), "grid3d", "another affine")
    # ---- masks with nothing inside
    c.add("zero_mask.nii.gz", _save(np.zeros(SHAPE, np.uint8), bad / "zero_mask.nii.gz"), "mask", "all zero")
    c.add("nan_mask.nii.gz", _save(np.full(SHAPE, np.nan, np.float32), bad / "nan_mask.nii.gz"), "mask",
          "all NaN (NaN is outside)")
    # ---- data with NaN inside a mask
    with_nan = four.copy()
    with_nan[2, 2, 1, 3] = np.nan
    c.add("nan_data.nii.gz", _save(with_nan, bad / "nan_data.nii.gz"), "data_in_mask", "NaN inside the mask")
    # ---- p maps that cannot hold p
    c.add("p_above_one.nii.gz", _save(stat, bad / "p_above_one.nii.gz"), "pmap", "values outside [0, 1]")
    (bad / "p_above_one.json").write_text(json.dumps({"p_convention": "p"}))
    c.add("p_bad_sidecar.nii.gz", _save(np.full(SHAPE, 0.5, np.float32), bad / "p_bad_sidecar.nii.gz"), "pmap",
          "sidecar with an unknown convention")
    (bad / "p_bad_sidecar.json").write_text(json.dumps({"p_convention": "q"}))
    c.add("p_no_sidecar.nii.gz", _save(np.full(SHAPE, 0.5, np.float32), bad / "p_no_sidecar.nii.gz"), "pmap",
          "no sidecar, no record")
    c.add("atlas_fractional.nii.gz", _save(np.full(SHAPE, 0.5, np.float32), bad / "atlas_fractional.nii.gz"),
          "atlas", "non-integer labels")
    # ---- image lists
    lists = bad / "lists"
    lists.mkdir()
    entries = [f"../../good/{p.name}" for p in subjects]

    def add_list(name, lines, why, raw=None, culprit=""):
        path = lists / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            path.write_text("\n".join(lines) + "\n")
        c.add(name, path, "list", why, culprit)

    add_list("missing_entry.txt", entries[:-1] + ["nowhere.nii.gz"], "an entry that does not exist")
    (root / "only_in_cwd.nii.gz").write_bytes(subjects[0].read_bytes())
    add_list("entry_in_cwd_only.txt", entries[:-1] + ["only_in_cwd.nii.gz"],
             "an entry present in the working directory (the corpus root) but not beside the list")
    add_list("no_entries.txt", ["# nothing", ""], "no entries")
    add_list("binary.lst", [], "binary", raw=b"\x1f\x8b\x08\x00\xff\xfe\x00\x01" * 8)
    add_list("one_subject.txt", entries[:1], "one subject")
    for case in c.cases("img3d", "grid3d"):
        if case.name in ("missing.nii.gz",):
            continue
        add_list(f"with_{case.name}.txt", entries[:-1] + [f"../{case.path.name}"], f"an entry: {case.why}",
                 culprit=case.path.name)
    # ---- design, contrast, F-contrast and block files
    files = bad / "files"
    files.mkdir()

    def add_file(name, text, slot, why):
        path = files / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        c.add(name, path, slot, why)

    rows = "".join(f"{a:g} {b:g}\n" for a, b in design)
    add_file("ragged.mat", f"/NumWaves 2\n/Matrix\n{rows}1\n", "design", "a short row")
    add_file("words.mat", "/NumWaves 2\n/Matrix\n" + "a b\n" * N_SUBJECTS, "design", "not numbers")
    add_file("empty.mat", "", "design", "empty")
    add_file("short.mat", "/NumWaves 2\n/Matrix\n1 0\n0 1\n", "design", "fewer rows than subjects")
    add_file("nan.mat", "/NumWaves 2\n/Matrix\n" + rows.replace("1 0", "nan 0", 1), "design", "NaN")
    add_file("binary.mat", b"\x00\xff\xfe\x80" * 16, "design", "binary")
    add_file("no_header.csv", "1,0\n" * N_SUBJECTS, "design", "CSV without a header")
    add_file("wide.con", "/NumWaves 3\n/Matrix\n1 -1 0\n", "tcon", "3 weights for 2 regressors")
    add_file("words.con", "/NumWaves 2\n/Matrix\nup down\n", "tcon", "not numbers")
    add_file("empty.con", "", "tcon", "empty")
    add_file("unknown_column.csv", "name,A,Z\nc1,1,-1\n", "tcon", "names a column the design lacks")
    add_file("bad.fts", "/NumWaves 3\n/Matrix\n1 1 1\n", "fcon", "3 columns for 2 t contrasts")
    add_file("words.fts", "/NumWaves 2\n/Matrix\nx y\n", "fcon", "not numbers")
    add_file("short.grp", "/NumWaves 1\n/Matrix\n1\n2\n", "blocks", "fewer labels than subjects")
    add_file("words.grp", "/NumWaves 1\n/Matrix\n" + "a\n" * N_SUBJECTS, "blocks", "not numbers")
    add_file("no_name.tsv", "index\tlabel\n1\tleft\n", "lut", "no 'name' column")
    add_file("text_index.tsv", "index\tname\none\tleft\n", "lut", "a non-integer index")
    c.add("missing.tsv", files / "missing.tsv", "lut", "does not exist")
    return c


@pytest.fixture(scope="session")
def broken_corpus(tmp_path_factory):
    """The corpus of broken inputs (see the module docstring); built once per session."""
    return build_broken_corpus(tmp_path_factory.mktemp("broken_corpus"))
