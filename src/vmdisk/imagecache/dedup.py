"""Content dedup in `_base`: bases with the same sha256 share their blocks on disk.

Each base keeps Nova's own name (`<sha1(image id)>`, its record, its lock); after a fetch the
new file is replaced by a reflink of an existing twin where the file system can (XFS, btrfs:
separate inodes, shared extents) or else by a hard link (one inode, two names). Either way the
names stay independent: the cleaner removes a name, not the content, and a refresh renames a
new file over one name without touching its twin. A hard link shares the inode's mtime, so a
twin in use keeps every name of that content "recently used"; that only keeps blocks that are
on disk anyway.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import struct
from pathlib import Path
from typing import Any

from vmdisk.errors import LockTimeout
from vmdisk.fsutil import FICLONE, fsync_dir, open_exclusive, regular_file_or_none, temp_name, touch
from vmdisk.imagecache.entries import EntryKind, scan
from vmdisk.imagecache.intake import Intake
from vmdisk.imagecache.records import BaseRecord, read_record
from vmdisk.imagecache.request import ResolvedImage
from vmdisk.locks import Locks
from vmdisk.tools.qemu_img import QemuImg

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_EXTENT_SHARED = 0x2000
_FIEMAP_HEAD = struct.Struct("=QQLLLL")
_FIEMAP_EXTENT = struct.Struct("=QQQQQLLLL")
TWIN_LOCK_TIMEOUT = 5.0


def twins(base_dir: Path, record: BaseRecord, own: str) -> list[str]:
    """Other complete bases whose record says the same content (sha256, size, format, kind)."""
    found = []
    for entry in scan(base_dir):
        if entry.kind is not EntryKind.ORIGINAL or entry.name == own or not entry.regular:
            continue
        other = read_record(base_dir / entry.name)
        if (
            other is not None
            and other.sha256 == record.sha256
            and other.size == record.size == entry.size
            and other.format == record.format
            and other.kind == record.kind
        ):
            found.append(entry.name)
    return found


def share_with_twin(base_dir: Path, locks: Locks, name: str, record: BaseRecord) -> str | None:
    """Replace `_base/name` by a reflink or hard link of a twin; returns how, or None.

    The caller holds `name`'s lock exclusively. The twin's lock is taken shared with a short
    timeout (a twin being refreshed or pruned is skipped, and two fetches linking to each
    other cannot deadlock).
    """
    base = base_dir / name
    for twin in twins(base_dir, record, name):
        with contextlib.suppress(LockTimeout), locks.shared(twin, timeout=TWIN_LOCK_TIMEOUT):
            st = regular_file_or_none(base_dir / twin)
            if st is None or st.st_size != record.size:
                continue
            how = _link(base_dir / twin, base)
            if how is not None:
                return how
    return None


def _link(twin: Path, base: Path) -> str | None:
    """Put a reflink (else a hard link) of `twin` at `base`, through a temporary name."""
    tmp = temp_name(base)
    how = "reflink"
    try:
        fd = open_exclusive(tmp, 0o644)
        try:
            with open(twin, "rb") as src:
                fcntl.ioctl(fd, FICLONE, src.fileno())
        except OSError:
            how = "hardlink"
        finally:
            os.close(fd)
        if how == "hardlink":
            tmp.unlink()
            os.link(twin, tmp)
        os.replace(tmp, base)
        touch(base)  # newly fetched: not as old as its twin
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        return None
    fsync_dir(base.parent)
    return how


def sharing(a: Path, b: Path) -> str | None:
    """How two same-content bases share blocks: "hardlink", "reflink", or None (two copies)."""
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return None
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return "hardlink"
    if has_shared_extents(a) and has_shared_extents(b):
        return "reflink"
    return None


def has_shared_extents(path: Path, count: int = 32) -> bool:
    """FIEMAP: does any of the file's first extents carry the SHARED flag (a reflink)?"""
    buf = array.array(
        "B", _FIEMAP_HEAD.pack(0, 2**64 - 1, 0, 0, count, 0) + bytes(_FIEMAP_EXTENT.size * count)
    )
    try:
        with open(path, "rb") as fh:
            fcntl.ioctl(fh.fileno(), FS_IOC_FIEMAP, buf, True)
    except OSError:
        return False
    mapped = _FIEMAP_HEAD.unpack_from(buf, 0)[3]
    for i in range(min(mapped, count)):
        flags = _FIEMAP_EXTENT.unpack_from(buf, _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size)[5]
        if flags & FIEMAP_EXTENT_SHARED:
            return True
    return False


class DedupIntake(Intake):
    """The intake, then share the new base's blocks with a twin of the same content."""

    def __init__(self, base_dir: Path, qemu: QemuImg, *, locks: Locks, **kwargs: Any) -> None:
        super().__init__(base_dir, qemu, **kwargs)
        self.locks = locks
        self.last_shared: str | None = None

    def fetch(
        self, request: ResolvedImage, base: Path, *, root_size: int | None = None
    ) -> BaseRecord:
        record = super().fetch(request, base, root_size=root_size)
        self.last_shared = share_with_twin(self.base_dir, self.locks, base.name, record)
        return record
