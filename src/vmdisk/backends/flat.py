"""Flat: a raw copy of the base per instance (reflink or sparse); blank disks made in place."""

from __future__ import annotations

from pathlib import Path

from vmdisk.backends.base import DiskBackend, sparse_file
from vmdisk.fsutil import copy_sparse
from vmdisk.imagecache.store import CachedImage
from vmdisk.model import BackendName, DiskPlan


class FlatBackend(DiskBackend):
    name = BackendName.FLAT

    def create_from_base(self, disk: DiskPlan, target: Path, base: CachedImage) -> None:
        copy_sparse(base.path, target)
        if disk.size is not None and disk.size > base.record.virtual_size:
            self.resize(target, base.record.format, disk.size)

    def create_blank(self, disk: DiskPlan, target: Path) -> None:
        sparse_file(target, disk.size or 0)
        self.format_blank(disk, target)
