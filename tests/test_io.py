"""Atomic outputs: a failed writer leaves nothing; finished files and folders get the usual permissions."""

import os
import stat

import pytest

from segformer.io import atomic_folder, atomic_path, write_text


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_finished_file_has_the_usual_permissions_even_if_the_writer_made_it_read_only(tmp_path):
    with atomic_path(tmp_path / "model.ckpt") as tmp:
        tmp.write_bytes(b"weights")
        os.chmod(tmp, stat.S_IRUSR)  # as mindspore.save_checkpoint / export do
    assert stat.S_IMODE((tmp_path / "model.ckpt").stat().st_mode) == 0o666 & ~umask()


def test_folder_appears_whole_and_usable(tmp_path):
    out = tmp_path / "infer"
    with atomic_folder(out) as staging:
        write_text(staging / "a_gray.png", "x")
        assert not out.exists()
    assert (out / "a_gray.png").read_text() == "x"
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask()


def test_failed_folder_leaves_nothing_and_a_full_folder_is_refused(tmp_path):
    out = tmp_path / "infer"
    with pytest.raises(RuntimeError):
        with atomic_folder(out) as staging:
            write_text(staging / "a_gray.png", "x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        with atomic_folder(out):
            pass
    assert (out / "mine.txt").read_text() == "keep"


def test_a_hard_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    from segformer.io import atomic_folder, atomic_path

    target, folder = tmp_path / "model.ckpt", tmp_path / "infer"
    (tmp_path / ".model.ckpt.abc123.tmp.ckpt").write_bytes(b"half")       # what SIGKILL leaves behind
    (tmp_path / ".infer.xyz.tmp").mkdir()
    (tmp_path / ".infer.xyz.tmp" / "a.png").write_bytes(b"half")
    (tmp_path / ".other.ckpt.abc.tmp.ckpt").write_bytes(b"another target's")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"done")
    with atomic_folder(folder) as tmp:
        (tmp / "a.png").write_bytes(b"done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.ckpt.abc.tmp.ckpt", "infer", "model.ckpt"]
