"""Facts read straight from an image header, without a subprocess: for our own disks only.

Used on the hot path (warm create, show, the cache cleaner's backing-file scan) where a
`qemu-img info` per disk would dominate. Never used to decide what an untrusted image is.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

QCOW_MAGIC = b"QFI\xfb"


@dataclass(frozen=True, slots=True)
class DiskFacts:
    format: str
    virtual_size: int
    allocated: int
    backing_file: str | None
    cluster_size: int | None


def read_facts(path: Path, fmt: str) -> DiskFacts:
    """Facts of a disk whose format we already know (from disk.info); never probe."""
    st = os.stat(path)
    allocated = st.st_blocks * 512
    if fmt != "qcow2":
        return DiskFacts(fmt, st.st_size, allocated, None, None)
    with open(path, "rb") as fh:
        head = fh.read(72)
        if len(head) < 72 or head[:4] != QCOW_MAGIC:
            raise ValueError(f"{path} is not a qcow2 file")
        backing_off, backing_len, cluster_bits, size = struct.unpack_from(">QIIQ", head, 8)
        backing = None
        if backing_off and 0 < backing_len <= 1023:
            fh.seek(backing_off)
            backing = fh.read(backing_len).decode("utf-8", "replace")
    return DiskFacts("qcow2", size, allocated, backing, 1 << cluster_bits)


def qcow2_backing_file(path: Path) -> str | None:
    try:
        return read_facts(path, "qcow2").backing_file
    except (OSError, ValueError):
        return None
