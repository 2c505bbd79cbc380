"""QC figures of registrations and atlas transfers: views named, sides marked from the affine."""

import nibabel as nib
import numpy as np
import pytest

from qsm.qc import save_qc_png, thalamus_closeup_png


def _head(flip_x):
    """A 40^3 2 mm volume with a bright blob in the subject's left (x < 0) and the front
    (y > 0), on an RAS affine or one whose first voxel axis runs right to left."""
    shape = (40, 40, 40)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -40.0
    if flip_x:
        affine[0, 0], affine[0, 3] = -2.0, 38.0
    ijk = np.indices(shape).reshape(3, -1).T
    world = (nib.affines.apply_affine(affine, ijk)).reshape(*shape, 3)
    data = np.full(shape, 100.0, np.float32)
    brain = (np.linalg.norm(world, axis=-1) < 34)
    data[~brain] = 0
    blob = np.linalg.norm(world - [-16, 10, 0], axis=-1) < 6
    data[blob] = 400.0
    thal = np.linalg.norm(world - [0, -10, 4], axis=-1) < 8
    return nib.Nifti1Image(data, affine), brain, blob, thal


def _bright_side(ax):
    """'left' or 'right': where the brighter half of the panel's image is."""
    img = np.asarray(ax.get_images()[0].get_array())
    half = img.shape[1] // 2
    return "left" if img[:, :half].sum() > img[:, half:].sum() else "right"


def _marks(ax):
    return {t.get_text(): t.get_position()[0] for t in ax.texts}


@pytest.mark.parametrize("flip_x", [False, True])
def test_views_and_sides_follow_the_affine(flip_x):
    img, brain, blob, thal = _head(flip_x)
    mask = nib.Nifti1Image(brain.astype(np.uint8), img.affine)
    fig = save_qc_png(img, img, mask, None, title="sub-01", thalamus_mask=thal)
    axes = [ax for ax in fig.axes if ax.get_images()]
    assert len(axes) == 6
    titles = [ax.get_title() for ax in axes]
    assert [t.split()[0] for t in titles] == ["sagittal", "coronal", "axial"] * 2
    assert [t.split()[1] for t in titles] == ["x", "y", "z"] * 2
    # the close-up row is centred on the thalamus (a side of it in the sagittal view)
    world = nib.affines.apply_affine(img.affine, np.argwhere(thal))
    assert float(titles[4].split()[3]) == pytest.approx(world[:, 1].mean(), abs=2)
    assert float(titles[5].split()[3]) == pytest.approx(world[:, 2].mean(), abs=2)
    # the blob lies in the subject's left: the axial panel's L mark is on its side
    axial = axes[2]
    marks = _marks(axial)
    assert set(marks) == {"L", "R"}
    assert _bright_side(axial) == ("left" if marks["L"] < 0.5 else "right")
    assert (marks["L"] < 0.5) is (not flip_x)   # RAS: neurological, L on the left
    # ... and in the front: the sagittal panel's A mark is on its side
    sagittal = axes[0]
    assert set(_marks(sagittal)) == {"A", "P"}
    # the legend names the colours
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["template edges (red)", "thalamus (close-ups) (yellow)"]


def test_closeup_names_outlines_and_writes_a_png(tmp_path):
    img, brain, blob, thal = _head(False)
    fig = thalamus_closeup_png(img, None, outlines=[(thal, "y"), (blob, "c")],
                               names=["transferred", "resampled"], title="QC")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["transferred (yellow)",
                                                                 "resampled (cyan)"]
    path = thalamus_closeup_png(img, tmp_path / "qc.png", outlines=[(thal, "y")])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") >= 900   # legible: >= 900 pixels across


def test_sagittal_closeup_goes_through_one_thalamus_not_the_midline():
    img, brain, _, _ = _head(False)
    world = nib.affines.apply_affine(img.affine, np.indices(brain.shape).reshape(3, -1).T)
    world = world.reshape(*brain.shape, 3)
    thal = np.zeros(brain.shape, bool)
    for x in (-12, 12):
        thal |= np.linalg.norm(world - [x, -10, 4], axis=-1) < 7
    thal[20, 15, 22] = True   # one label voxel on the midline (x = 0), as THOMAS has
    fig = thalamus_closeup_png(img, None, outlines=[(thal, "y")])
    x = float(fig.axes[0].get_title().split()[3])
    assert fig.axes[0].get_title().startswith("sagittal") and 8 <= abs(x) <= 16
