"""Writing results (voxstats.outputs): modes, atomicity, checks before work, the output lock."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxstats.outputs import (OutputBusyError, atomic_write, atomic_write_text, check_outputs, output_lock,
                              save_img_atomic)


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda value: os.umask(value)
    os.umask(previous)


def _mode(path):
    return Path(path).stat().st_mode & 0o777


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_every_writer_honours_the_umask(tmp_path, umask, mask, expected):
    """As open(path, "w") would: 0o666 minus the umask (mkstemp gave 0600 whatever the umask)."""
    umask(mask)
    img = nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4))
    written = [atomic_write_text(tmp_path / "a.json", "{}\n"),
               save_img_atomic(img, tmp_path / "b.nii.gz"),
               save_img_atomic(img, tmp_path / "sub" / "c.nii"),
               atomic_write(tmp_path / "d.npz", lambda h: np.savez(h, x=np.zeros(2)))]
    with open(tmp_path / "reference.txt", "w") as handle:  # what the system does for a plain file
        handle.write("x")
    assert _mode(tmp_path / "reference.txt") == expected
    for path in written:
        assert _mode(path) == expected, path
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "b.nii.gz").dataobj), 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.nii.gz", "d.npz", "reference.txt", "sub"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.tsv"
    target.write_text("old\n")

    def fail(handle):
        handle.write(b"half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, fail)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.tsv"]


def test_check_outputs(tmp_path):
    (tmp_path / "exists.nii.gz").write_bytes(b"x")
    check_outputs([tmp_path / "new" / "a.nii.gz", tmp_path / "b.json"])  # creatable: fine
    assert (tmp_path / "new").is_dir() and list((tmp_path / "new").iterdir()) == []
    with pytest.raises(FileExistsError, match=r"exists.nii.gz exists; use --overwrite to replace it"):
        check_outputs([tmp_path / "exists.nii.gz"])
    check_outputs([tmp_path / "exists.nii.gz"], overwrite=True)
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match=r"^-o: .*folder is a folder; expected a file name"):
        check_outputs([tmp_path / "folder"], flag="-o")
    blocker = tmp_path / "plain_file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"^-o: cannot write .*plain_file/out_tstat1.nii.gz \(.*plain_file "
                                                 r"is a file, not a folder\)"):
        check_outputs([blocker / "out_tstat1.nii.gz"], flag="-o")
    with pytest.raises(PermissionError, match=r"^-o: cannot write .*plain_file/sub/out.nii.gz \(Not a directory"):
        check_outputs([blocker / "sub" / "out.nii.gz"], flag="-o")


def _read_only(folder):
    """Make ``folder`` unwritable even for root (chmod, or the immutable flag); returns the undo."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root where 'chattr +i' is not permitted: cannot make a folder read-only")
    return lambda: subprocess.run([chattr, "-i", str(folder)], capture_output=True)


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_unwritable_folder_is_found_before_any_work(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    undo = _read_only(folder)
    try:
        with pytest.raises(PermissionError, match=r"^-o: cannot write .*shared/res_tstat1.nii.gz "
                                                  r"\((Permission denied|Operation not permitted) in "):
            check_outputs([folder / "res_tstat1.nii.gz"], flag="-o")
        with pytest.raises(PermissionError, match=r"^-o: cannot write .*shared/res "):
            with output_lock(folder / "res", flag="-o"):
                pass
    finally:
        undo()


LOCKER = """
import sys, time
from voxstats.outputs import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_the_lock_refuses_a_second_writer_and_dies_with_its_holder(tmp_path):
    target = tmp_path / "res"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(target)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusyError, match=rf"^-o: {target} is being written by another run "
                                                  rf"\(pid {holder.pid} on .*, started .*\); wait for it"):
            with output_lock(target, flag="-o"):
                pass
    finally:
        holder.kill()  # SIGKILL: no clean-up, the lock file stays behind
        holder.wait()
        holder.stdout.close()
    assert (tmp_path / ".res.lock").exists()
    with output_lock(target, flag="-o") as lock:  # the system released the dead holder's lock
        assert lock == tmp_path / ".res.lock"
    assert not (tmp_path / ".res.lock").exists()


def test_write_errors_name_the_target_not_the_temporary(tmp_path, monkeypatch):
    def full(handle):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=rf"^cannot write {tmp_path / 'r.json'} \(No space left on device\)$"):
        atomic_write(tmp_path / "r.json", full)
    img = nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4))

    def failing_save(image, filename):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(PermissionError, match=rf"^cannot write {tmp_path / 'b.nii.gz'} \(Permission denied\)$"):
        save_img_atomic(img, tmp_path / "b.nii.gz")
    assert list(tmp_path.iterdir()) == []
