"""File-system primitives on tmp_path: no tools, no root."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from vmdisk import fsutil
from vmdisk.errors import InsufficientSpace, InvalidRequest


def test_temp_name_is_a_marked_sibling(tmp_path: Path) -> None:
    final = tmp_path / "base"
    a, b = fsutil.temp_name(final), fsutil.temp_name(final)
    assert a.parent == tmp_path and a != b
    assert a.name.startswith("base.part-")
    assert fsutil.is_temp_name(a.name) and not fsutil.is_temp_name("base")


def test_open_exclusive_refuses_existing_names_and_symlinks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    os.close(fsutil.open_exclusive(path, 0o640))
    assert path.stat().st_mode & 0o777 == 0o640 & ~_umask()
    with pytest.raises(FileExistsError):
        fsutil.open_exclusive(path)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        fsutil.open_exclusive(link)
    assert not (tmp_path / "elsewhere").exists()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_write_atomic_replaces_content_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "instance.json"
    fsutil.write_atomic(path, b"one")
    fsutil.write_atomic(path, b"two", mode=0o600)
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["instance.json"]


def test_write_atomic_removes_its_temp_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "f"
    with pytest.raises(FileNotFoundError):
        fsutil.write_atomic(path, b"x")
    target = tmp_path / "d"
    target.mkdir()
    with pytest.raises(OSError):  # rename of a file over a directory
        fsutil.write_atomic(target, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_removing_on_error_removes_only_on_error(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a")
    with fsutil.removing_on_error(a, b):
        pass
    assert a.exists()
    with pytest.raises(KeyboardInterrupt), fsutil.removing_on_error(a, b):
        raise KeyboardInterrupt
    assert not a.exists()


def test_ensure_real_dir(tmp_path: Path) -> None:
    made = fsutil.ensure_real_dir(tmp_path / "x" / "y")
    assert made.is_dir()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InvalidRequest, match="not a directory"):
        fsutil.ensure_real_dir(tmp_path / "file")
    (tmp_path / "link").symlink_to(made)
    with pytest.raises(InvalidRequest, match="symlink") as err:
        fsutil.ensure_real_dir(tmp_path / "link")
    assert err.value.reason == "symlink"


def test_regular_file_or_none(tmp_path: Path) -> None:
    assert fsutil.regular_file_or_none(tmp_path / "none") is None
    (tmp_path / "f").write_bytes(b"abc")
    st = fsutil.regular_file_or_none(tmp_path / "f")
    assert st is not None and st.st_size == 3
    (tmp_path / "l").symlink_to(tmp_path / "f")
    with pytest.raises(InvalidRequest, match="not a regular file"):
        fsutil.regular_file_or_none(tmp_path / "l")


def test_touch_updates_mtime(tmp_path: Path) -> None:
    path = tmp_path / "base"
    path.write_bytes(b"")
    os.utime(path, (1000, 1000))
    fsutil.touch(path)
    assert path.stat().st_mtime > 1000


def test_require_space(tmp_path: Path) -> None:
    free = fsutil.free_bytes(tmp_path)
    assert free > 0
    fsutil.require_space(tmp_path, 1, "a byte")
    with pytest.raises(InsufficientSpace, match=r"not enough space .* for the base") as err:
        fsutil.require_space(tmp_path, free + 2**50, "the base")
    assert err.value.reason == "insufficient-space"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_space_error_translates_full_disks(tmp_path: Path, code: int) -> None:
    err = fsutil.space_error(OSError(code, "full"), tmp_path, "disk")
    assert isinstance(err, InsufficientSpace)
    assert "ran out of space" in err.message


def test_space_error_ignores_other_errors(tmp_path: Path) -> None:
    assert fsutil.space_error(OSError(errno.EIO, "io"), tmp_path, "disk") is None


def test_probes_answer_a_bool_and_leave_nothing(tmp_path: Path) -> None:
    assert isinstance(fsutil.direct_io_supported(tmp_path), bool)
    assert isinstance(fsutil.fallocate_supported(tmp_path), bool)
    assert list(tmp_path.iterdir()) == []


def test_copy_sparse_copies_data_and_keeps_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    with open(src, "wb") as fh:
        fh.write(b"head")
        fh.seek(4 << 20)
        fh.write(b"middle")
        fh.truncate(16 << 20)  # ends in a hole
    how = fsutil.copy_sparse(src, dst)
    assert how in ("reflink", "sparse")
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_size == 16 << 20
    assert dst.stat().st_blocks * 512 < 16 << 20


def test_copy_sparse_of_an_all_hole_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    with open(src, "wb") as fh:
        fh.truncate(1 << 20)
    fsutil.copy_sparse(src, dst)
    assert dst.stat().st_size == 1 << 20
    assert dst.read_bytes() == bytes(1 << 20)


def test_copy_sparse_refuses_an_existing_destination(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"a")
    (tmp_path / "dst").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        fsutil.copy_sparse(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == b"keep"
