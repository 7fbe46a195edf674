"""Flat: a raw copy of the base per instance (reflink or sparse); blank disks made in place."""

from __future__ import annotations

from pathlib import Path

from vmdisk.backends.base import FileBackend, sparse_file
from vmdisk.fsutil import copy_sparse
from vmdisk.imagecache.store import CachedImage
from vmdisk.model import BackendName, DiskPlan, InstancePlan


class FlatBackend(FileBackend):
    name = BackendName.FLAT

    def create_from_base(self, disk: DiskPlan, target: Path, base: CachedImage) -> None:
        copy_sparse(base.path, target)
        if disk.size is not None and disk.size > base.record.virtual_size:
            self.qemu.resize(target, base.record.format, disk.size)

    def create_blank(self, disk: DiskPlan, target: Path) -> None:
        sparse_file(target, disk.size or 0)
        self.format_blank(disk, target)

    def local_bytes(self, plan: InstancePlan, base: CachedImage) -> int:
        """Flat copies take the base's allocation, plus any preallocated sizes."""
        total = base.path.stat().st_blocks * 512
        if plan.preallocate:
            total += sum(d.size or 0 for d in plan.disks)
        return total
