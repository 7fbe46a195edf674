"""qcow2 overlays on `_base` entries, backing format always explicit.

Overlays are made with extended L2 entries (`[libvirt] qcow2_extended_l2`, default on): Nova's
layout otherwise, but a guest's first 4 KiB write into a cluster allocates and copies 4 KiB,
not 64 KiB (bench X1). QEMU before 5.2 cannot open such a file: turn the setting off when an
older qemu (another host sharing instances_path, a migration target) must read the disks.
"""

from __future__ import annotations

from pathlib import Path

from vmdisk.backends.base import FileBackend, local_path
from vmdisk.fsutil import copy_sparse, removing_on_error, temp_name
from vmdisk.imagecache.store import CachedImage
from vmdisk.locks import Locks
from vmdisk.model import BackendName, DiskPlan
from vmdisk.record import DiskEntry
from vmdisk.tools.headers import read_facts
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.units import GiB


class Qcow2Backend(FileBackend):
    name = BackendName.QCOW2

    def create_from_base(self, disk: DiskPlan, target: Path, base: CachedImage) -> None:
        self.qemu.create(
            target,
            "qcow2",
            disk.size,
            backing_file=base.path,
            backing_format=base.record.format,
            cluster_size=base.record.cluster_size,
            extended_l2=self.deps.libvirt.qcow2_extended_l2,
        )

    def create_blank(self, disk: DiskPlan, target: Path) -> None:
        if disk.base is None or disk.size is None:
            raise ValueError(f"{disk.name} needs a template name and a size")
        make = lambda tmp: self.format_blank(disk, tmp)  # noqa: E731
        with self.templates.using(disk.base, disk.size, make) as template:
            self.qemu.create(
                target,
                "qcow2",
                disk.size,
                backing_file=template,
                backing_format="raw",
                extended_l2=self.deps.libvirt.qcow2_extended_l2,
            )

    def resize(self, entry: DiskEntry, size: int) -> None:
        path = local_path(entry)
        ensure_legacy_backing(self.deps.locks, self.qemu, path, entry.format)
        super().resize(entry, size)

    def check_present(self, entry: DiskEntry, base_dir: Path) -> None:
        path = local_path(entry)
        if path.exists():
            ensure_legacy_backing(self.deps.locks, self.qemu, path, entry.format)
        super().check_present(entry, base_dir)


def ensure_legacy_backing(locks: Locks, qemu: QemuImg, disk: Path, fmt: str) -> None:
    """Regenerate a missing pre-Grizzly `<sha1>_<N>` backing file: the base grown to N GiB."""
    if fmt != "qcow2":
        return
    backing = read_facts(disk, fmt).backing_file
    if not backing:
        return
    path = Path(backing)
    stem, sep, digits = path.name.rpartition("_")
    if not sep or not digits.isdigit() or len(stem) != 40 or path.exists():
        return
    original = path.with_name(stem)
    with locks.exclusive(path.name):
        if path.exists():
            return
        tmp = temp_name(path)
        with removing_on_error(tmp):
            copy_sparse(original, tmp)
            if int(digits) * GiB > original.stat().st_size:
                qemu.resize(tmp, "raw", int(digits) * GiB)
            tmp.rename(path)
