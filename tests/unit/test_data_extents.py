"""The one data-extent walker, and the three readers built on it, on a real sparse file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from vmdisk.fsutil import copy_sparse, data_extents
from vmdisk.imagecache.digest import TreeDigest, plain_sha256
from vmdisk.imagecache.intake import hash_sparse_file
from vmdisk.imagecache.sources import LocalFileSource

MiB = 1024 * 1024


def sparse(path: Path) -> Path:
    """A hole, 4 KiB of data at 3 MiB, a hole, 4 KiB at 7 MiB, a trailing hole: 10 MiB."""
    with open(path, "wb") as fh:
        for offset in (3 * MiB, 7 * MiB):
            fh.seek(offset)
            fh.write(b"\xab" * 4096)
        fh.truncate(10 * MiB)
    return path


def test_extents_cover_every_written_byte_and_stay_in_range(tmp_path: Path) -> None:
    path = sparse(tmp_path / "s.raw")
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = list(data_extents(fd, 0, 10 * MiB))
        tail = list(data_extents(fd, 5 * MiB, 10 * MiB))
    finally:
        os.close(fd)
    assert extents and all(0 <= a < b <= 10 * MiB for a, b in extents)
    for offset in (3 * MiB, 7 * MiB):
        assert any(a <= offset and offset + 4096 <= b for a, b in extents)
    assert all(a >= 5 * MiB for a, _ in tail)
    assert any(a <= 7 * MiB < b for a, b in tail)


def test_hash_copy_and_stream_agree_with_a_plain_read(tmp_path: Path) -> None:
    path = sparse(tmp_path / "s.raw")
    plain = path.read_bytes()
    streamed = TreeDigest()
    streamed.update(plain)
    assert hash_sparse_file(path) == streamed.hexdigest()
    assert plain_sha256(path) == hashlib.sha256(plain).hexdigest()
    copy_sparse(path, tmp_path / "copy.raw")
    assert (tmp_path / "copy.raw").read_bytes() == plain
    opened = LocalFileSource(path).open(MiB + 1)
    assert b"".join(opened.chunks) == plain[MiB + 1 :]
    assert LocalFileSource(path).resolve().size == 10 * MiB
