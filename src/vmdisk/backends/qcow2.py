"""qcow2 overlays on `_base` entries, backing format always explicit."""

from __future__ import annotations

from pathlib import Path

from vmdisk.backends.base import DiskBackend
from vmdisk.imagecache.store import CachedImage
from vmdisk.model import BackendName, DiskPlan


class Qcow2Backend(DiskBackend):
    name = BackendName.QCOW2

    def create_from_base(self, disk: DiskPlan, target: Path, base: CachedImage) -> None:
        self.qemu.create(
            target,
            "qcow2",
            disk.size,
            backing_file=base.path,
            backing_format=base.record.format,
            cluster_size=base.record.cluster_size,
        )

    def create_blank(self, disk: DiskPlan, target: Path) -> None:
        if disk.base is None or disk.size is None:
            raise ValueError(f"{disk.name} needs a template name and a size")
        make = lambda tmp: self.format_blank(disk, tmp)  # noqa: E731
        with self.templates.using(disk.base, disk.size, make) as template:
            self.qemu.create(
                target, "qcow2", disk.size, backing_file=template, backing_format="raw"
            )
