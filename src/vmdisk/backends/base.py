"""DiskBackend: Nova's cache-then-create template, small. Backends never write XML."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from vmdisk.errors import FlavorDiskSmallerThanImage
from vmdisk.fsutil import open_exclusive
from vmdisk.imagecache.store import CachedImage
from vmdisk.imagecache.templates import TemplateCache
from vmdisk.model import BackendName, DiskPlan, DiskRole
from vmdisk.tools.filesystems import make_filesystem, make_swap
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import Runner
from vmdisk.units import format_size


def verify_base_size(base: CachedImage, size: int | None) -> None:
    """The image must fit the root disk; size None means "use the image's size" (root_gb 0)."""
    if size is not None and base.record.virtual_size > size:
        raise FlavorDiskSmallerThanImage(
            f"the image's virtual size {format_size(base.record.virtual_size)} is larger than "
            f"the flavor's root disk {format_size(size)}",
            reason="flavor-too-small",
            hint="pick a flavor with a larger root disk, or --root-gb 0 for the image's size",
        )


class DiskBackend(ABC):
    name: ClassVar[BackendName]

    def __init__(self, qemu: QemuImg, runner: Runner, templates: TemplateCache) -> None:
        self.qemu = qemu
        self.runner = runner
        self.templates = templates

    def ensure_disk(self, disk: DiskPlan, target: Path, base: CachedImage | None) -> None:
        """Make `disk` at `target` (its path in the build directory) unless it exists."""
        if target.exists():
            return
        if disk.role in (DiskRole.ROOT, DiskRole.RESCUE):
            if base is None:
                raise ValueError(f"{disk.name} needs a base image")
            self.create_from_base(disk, target, base)
        else:
            self.create_blank(disk, target)

    @abstractmethod
    def create_from_base(self, disk: DiskPlan, target: Path, base: CachedImage) -> None: ...

    @abstractmethod
    def create_blank(self, disk: DiskPlan, target: Path) -> None: ...

    def resize(self, path: Path, fmt: str, size: int) -> None:
        self.qemu.resize(path, fmt, size)

    def format_blank(self, disk: DiskPlan, target: Path) -> None:
        """Give a blank raw file its content: a labelled file system or a swap signature."""
        if disk.role is DiskRole.SWAP:
            make_swap(self.runner, target)
        else:
            make_filesystem(self.runner, disk.fs or "ext4", target, disk.label, disk.mkfs_command)


def sparse_file(path: Path, size: int) -> None:
    fd = open_exclusive(path, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
