"""recheck_raw_base: the verdict is remembered per (size, header bytes), never per file name."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vmdisk.errors import UnsafeImage
from vmdisk.imagecache import inspect

MiB = 1024 * 1024


def _qcow2_header() -> bytes:
    """A qcow2 v3 header: magic, version, no backing file, 64 KiB clusters, 1 MiB virtual."""
    return b"QFI\xfb" + struct.pack(">IQIIQ", 3, 0, 0, 16, MiB) + bytes(4096 - 32)


def test_a_raw_base_passes_and_a_rewritten_header_is_caught(tmp_path: Path) -> None:
    base = tmp_path / "b"
    base.write_bytes(b"\x01" * 4096 + bytes(4 * MiB))
    inspect.recheck_raw_base(base)
    inspect.recheck_raw_base(base)  # remembered: same bytes, same size
    with open(base, "r+b") as fh:  # same inode, same size, a new header
        fh.write(_qcow2_header())
    with pytest.raises(UnsafeImage):
        inspect.recheck_raw_base(base)
    with pytest.raises(UnsafeImage):
        inspect.recheck_raw_base(base)  # a refusal is never remembered as a pass


def test_the_same_header_on_a_different_size_is_checked_again(tmp_path: Path) -> None:
    base = tmp_path / "b"
    base.write_bytes(b"\x02" * 4096)
    inspect.recheck_raw_base(base)
    known = len(inspect._RECHECKED)
    with open(base, "ab") as fh:
        fh.write(bytes(MiB))
    inspect.recheck_raw_base(base)
    assert len(inspect._RECHECKED) == known + 1
