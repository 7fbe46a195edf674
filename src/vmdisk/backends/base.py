"""DiskBackend: Nova's cache-then-create template, small. Backends never write XML.

A backend decides where each disk of an instance lives (a file, a block device, a network
image) and owns everything done to it afterwards: describe, resize, remove, adopt a file made
locally. Sources that are plain files (kernels, ramdisks, file config drives) are handled
here, so every backend shares them.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from vmdisk.errors import BackendError, DiskMissing, FlavorDiskSmallerThanImage, NotSupported
from vmdisk.fsutil import open_exclusive
from vmdisk.imagecache.cleaner import Action, CleanupPlan
from vmdisk.imagecache.store import CachedImage
from vmdisk.imagecache.templates import TemplateCache
from vmdisk.locks import Locks
from vmdisk.model import (
    BackendName,
    BlockSource,
    DiskPlan,
    DiskRole,
    FileSource,
    InstancePlan,
    ProvisionedDisk,
)
from vmdisk.record import DiskEntry
from vmdisk.settings import LibvirtSettings
from vmdisk.tools.filesystems import make_filesystem, make_swap
from vmdisk.tools.headers import read_facts
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import Runner
from vmdisk.units import format_size


@dataclass(frozen=True, slots=True)
class BackendDeps:
    """What a backend may use; each reads its own settings from the [libvirt] slice."""

    qemu: QemuImg
    runner: Runner
    templates: TemplateCache
    locks: Locks
    libvirt: LibvirtSettings


@dataclass(frozen=True, slots=True)
class DiskState:
    """A disk as it is now, for `show`: where, how big, what it is made from."""

    location: str
    virtual_size: int | None
    allocated: int | None
    backing_file: str | None
    details: tuple[tuple[str, str | None], ...] = ()
    error: str | None = None

    def to_dict(self, entry: DiskEntry) -> dict[str, object]:
        out: dict[str, object] = {
            "name": entry.name,
            "path": self.location,
            "format": entry.format,
            "virtual_size": self.virtual_size,
            "allocated": self.allocated,
            "backing_file": self.backing_file,
        }
        out.update(self.details)
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True, slots=True)
class VolumeDecision:
    """What `cache prune` does with a base a backend keeps outside `_base` (a thin base LV)."""

    name: str  # the volume
    base: str  # the _base entry it was made from
    action: Action  # KEEP or REMOVE
    reason: str
    age: float | None  # seconds since its _base entry was last used, None if the entry is gone
    allocated: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "base-volume",
            "base": self.base,
            "action": str(self.action),
            "reason": self.reason,
            "age_seconds": None if self.age is None else round(self.age),
            "allocated": self.allocated,
        }


@dataclass
class VolumePrune:
    """The backend's half of a prune pass: its plan, and (unless a dry run) what it did."""

    decisions: list[VolumeDecision] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept_on_recheck: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def would_free(self) -> int:
        return sum(d.allocated or 0 for d in self.decisions if d.action is Action.REMOVE)

    def result_dict(self) -> dict[str, Any]:
        return {
            "removed": self.removed,
            "kept_on_recheck": self.kept_on_recheck,
            "errors": self.errors,
        }


def verify_base_size(image_size: int, size: int | None) -> None:
    """The image must fit the root disk; size None means "use the image's size" (root_gb 0)."""
    if size is not None and image_size > size:
        raise FlavorDiskSmallerThanImage(
            f"the image's virtual size {format_size(image_size)} is larger than "
            f"the flavor's root disk {format_size(size)}",
            reason="flavor-too-small",
            hint="pick a flavor with a larger root disk, or --root-gb 0 for the image's size",
        )


class DiskBackend(ABC):
    """One instance operation's view of a storage backend; use it as a context manager."""

    name: ClassVar[BackendName]
    supports_rescue: ClassVar[bool] = True

    def __init__(self, deps: BackendDeps) -> None:
        self.deps = deps
        self.qemu = deps.qemu
        self.runner = deps.runner
        self.templates = deps.templates

    def __enter__(self) -> DiskBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release connections held for the operation."""
        return None

    def needs_base(self, location: str | None) -> bool:
        """Whether the root must come from a local _base entry (not, e.g., a Ceph clone)."""
        return True

    def local_bytes(self, plan: InstancePlan, base: CachedImage) -> int:
        """Bytes the instance directory must have free before the disks are made."""
        return 0

    @abstractmethod
    def locate(self, disk: DiskPlan) -> ProvisionedDisk:
        """Where `disk` is (or will be) and its driver format. Pure: nothing is touched."""

    def ensure_disk(
        self,
        disk: DiskPlan,
        target: Path,
        base: CachedImage | None,
        location: str | None = None,
    ) -> ProvisionedDisk:
        """Make `disk` unless it exists. File backends write `target`, its build-time path."""
        if not self.exists(disk, target):
            if disk.role in (DiskRole.ROOT, DiskRole.RESCUE):
                if base is None:
                    raise NotSupported(f"{self.name} cannot make {disk.name} without a base image")
                self.create_from_base(disk, target, base)
            else:
                self.create_blank(disk, target)
        return self.locate(disk)

    def exists(self, disk: DiskPlan, target: Path) -> bool:
        return target.exists()

    @abstractmethod
    def create_from_base(self, disk: DiskPlan, target: Path, base: CachedImage) -> None: ...

    @abstractmethod
    def create_blank(self, disk: DiskPlan, target: Path) -> None: ...

    def adopt(self, disk: DiskPlan, local: Path) -> ProvisionedDisk:
        """Take a file built locally (the config drive) as the disk; files stay where they are."""
        return ProvisionedDisk(FileSource(disk.path), disk.format)

    def rescue_disk(self, disk: DiskPlan, target: Path, base: CachedImage) -> ProvisionedDisk:
        """disk.rescue from the rescue image (see supports_rescue)."""
        self.create_from_base(disk, target, base)
        return ProvisionedDisk(FileSource(disk.path), disk.format)

    def describe(self, entry: DiskEntry) -> DiskState:
        source = entry.source
        path = source.path if isinstance(source, FileSource) else None
        if isinstance(source, BlockSource):
            path = source.device
        if path is None:
            return DiskState(str(source), None, None, None, error="unknown source")
        try:
            facts = read_facts(path, entry.format)
        except (OSError, ValueError) as exc:
            return DiskState(str(path), None, None, None, error=str(exc))
        return DiskState(str(path), facts.virtual_size, facts.allocated, facts.backing_file)

    def resize(self, entry: DiskEntry, size: int) -> None:
        """Grow `entry` to `size` bytes (the caller has refused shrinking)."""
        self.qemu.resize(local_path(entry), entry.format, size)

    def check_present(self, entry: DiskEntry, base_dir: Path) -> None:
        """Before a boot: the disk exists, and so does what it is made from."""
        path = local_path(entry)
        if not path.exists():
            raise DiskMissing(f"disk {path} is missing", reason="disk-missing")
        if entry.format == "qcow2":
            backing = read_facts(path, "qcow2").backing_file
            if backing and not Path(backing).exists():
                raise DiskMissing(
                    f"backing file {backing} of {entry.name} is gone from {base_dir}",
                    reason="base-missing",
                    hint="the base was removed by hand; vmdisk cache prune never removes one "
                    "in use",
                )

    def remove(self, entries: Sequence[DiskEntry]) -> None:
        """Remove disks kept outside the instance directory (files go with the directory)."""
        return None

    def discard(self, disks: Sequence[DiskPlan]) -> None:
        """After a failed create: remove whatever of `disks` exists outside the build dir."""
        return None

    def prune_bases(
        self,
        files: CleanupPlan,
        in_use: Set[str],
        base_dir: Path,
        *,
        remove_unused: bool,
        dry_run: bool,
    ) -> VolumePrune:
        """After `cache prune` has pruned `_base` (`files`): plan, and unless `dry_run` remove,
        the copies of bases this backend keeps elsewhere. `in_use` is read after the file
        pass. Backends whose disks only reference `_base` keep nothing: the default."""
        return VolumePrune()

    def format_blank(self, disk: DiskPlan, target: Path) -> None:
        """Give a blank raw file its content: a labelled file system or a swap signature."""
        if disk.role is DiskRole.SWAP:
            make_swap(self.runner, target)
        else:
            make_filesystem(self.runner, disk.fs or "ext4", target, disk.label, disk.mkfs_command)


def local_path(entry: DiskEntry) -> Path:
    """The local path of a disk, refused if it is a symlink: a link planted in an instance
    directory must never let qemu-img write through it to a file elsewhere."""
    if isinstance(entry.source, FileSource):
        path = entry.source.path
        if path.is_symlink():
            raise BackendError(
                f"{path} is a symlink; refusing to touch what it points at",
                reason="symlink",
                hint="the instance directory was tampered with; check it by hand",
            )
        return path
    if isinstance(entry.source, BlockSource):
        return entry.source.device
    raise NotSupported(f"{entry.name} is not a local disk")


class FileBackend(DiskBackend):
    """Backends whose disks are files in the instance directory (qcow2, flat)."""

    def locate(self, disk: DiskPlan) -> ProvisionedDisk:
        return ProvisionedDisk(FileSource(disk.path), disk.format)


def sparse_file(path: Path, size: int) -> None:
    fd = open_exclusive(path, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
