"""LVM: every disk a logical volume `<uuid>_<disk>` in images_volume_group (Nova's names).

Thick (Nova's way): the raw base from `_base` is written into an LV of the flavor's size, all
of it, holes written as zeros so no block of an earlier tenant survives. `sparse_logical_
volumes` makes snapshot-backed sparse LVs instead, as Nova does.

Thin (`images_thin_pool`, beyond Nova): each base is imported once into the pool as the
read-only thin LV `vmdisk_base_<sha1>`, and every root is a thin snapshot of it, extended to
the flavor's size: a linked clone, instant like a qcow2 overlay but a block device. Thin
volumes start out reading zeros, so the import skips holes.

Removal runs `volume_clear` first (zero: BLKZEROOUT via blkdiscard -z; shred: shred -n3),
over `volume_clear_size` MiB or all of it, except on thin volumes of a pool that zeroes new
blocks, where nothing of the old data can be read back. The config drive, console.log,
disk.info and libvirt.xml stay files in the instance directory.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Sequence, Set
from dataclasses import dataclass
from pathlib import Path

from vmdisk.backends.base import BackendDeps, DiskBackend, DiskState, VolumeDecision, VolumePrune
from vmdisk.errors import DiskMissing, NotSupported, SettingsError, VmdiskError
from vmdisk.imagecache.cleaner import Action, CleanupPlan, Decision
from vmdisk.imagecache.store import CachedImage
from vmdisk.model import (
    BackendName,
    BlockSource,
    DiskPlan,
    DiskRole,
    FileSource,
    ProvisionedDisk,
)
from vmdisk.record import DiskEntry
from vmdisk.settings import LibvirtSettings, VolumeClear
from vmdisk.tools.lvm import LogicalVolume, Lvm
from vmdisk.units import MiB

BASE_PREFIX = "vmdisk_base_"
#: Disks that are volumes; kernels, ramdisks and the config drive stay files.
_ROLES = (DiskRole.ROOT, DiskRole.EPHEMERAL, DiskRole.SWAP, DiskRole.RESCUE)


@dataclass(frozen=True, slots=True)
class LvmConfig:
    volume_group: str
    thin_pool: str | None = None
    sparse: bool = False
    clear: VolumeClear = VolumeClear.ZERO
    clear_size_mib: int = 0  # 0: the whole volume

    @classmethod
    def from_settings(cls, lib: LibvirtSettings) -> LvmConfig:
        if not lib.images_volume_group:
            raise SettingsError(
                "images_type = 'lvm' needs [libvirt] images_volume_group", reason="bad-setting"
            )
        return cls(
            volume_group=lib.images_volume_group,
            thin_pool=lib.images_thin_pool or None,
            sparse=lib.sparse_logical_volumes,
            clear=VolumeClear(lib.volume_clear),
            clear_size_mib=lib.volume_clear_size,
        )


def volume_name(owner: str, disk: str) -> str:
    """Nova's LV name: `<uuid>_<disk>`, underscores in the disk's name doubled."""
    return f"{owner}_{disk.replace('_', '__')}"


class LvmBackend(DiskBackend):
    name = BackendName.LVM

    def __init__(self, deps: BackendDeps) -> None:
        super().__init__(deps)
        self.config = LvmConfig.from_settings(deps.libvirt)
        self.lvm = Lvm(deps.runner)

    @property
    def vg(self) -> str:
        return self.config.volume_group

    def device(self, name: str) -> Path:
        return Path("/dev") / self.vg / name

    def locate(self, disk: DiskPlan) -> ProvisionedDisk:
        if disk.role not in _ROLES:
            return ProvisionedDisk(FileSource(disk.path), disk.format)
        return ProvisionedDisk(BlockSource(self.device(volume_name(disk.owner, disk.name))), "raw")

    def exists(self, disk: DiskPlan, target: Path) -> bool:
        return self.lvm.volume(self.vg, volume_name(disk.owner, disk.name)) is not None

    def _new_volume(self, name: str, size: int) -> None:
        if self.config.thin_pool:
            self.lvm.create_thin(self.vg, self.config.thin_pool, name, size)
        else:
            self.lvm.create(self.vg, name, size, sparse=self.config.sparse)

    def create_from_base(self, disk: DiskPlan, target: Path, base: CachedImage) -> None:
        name = volume_name(disk.owner, disk.name)
        size = max(disk.size or 0, base.record.virtual_size)
        if self.config.thin_pool:
            parent = self._import_once(base)
            self.lvm.snapshot(self.vg, parent, name)
            if size > base.record.virtual_size:
                self.lvm.extend(self.vg, name, size)
            return
        self._new_volume(name, size)
        try:
            self._write_base(base, self.device(name), target_is_zero=self.config.sparse)
        except BaseException:
            self._remove_quietly(name)
            raise

    def _write_base(self, base: CachedImage, device: Path, *, target_is_zero: bool) -> None:
        """The base's bytes onto the volume; holes are written as zeros unless the volume is
        known to read zeros already (thin, or snapshot-backed sparse)."""
        argv = ["qemu-img", "convert", "-q", "-n", "-t", "none", "-f", base.record.format]
        argv += ["-O", "raw"]
        if target_is_zero:
            argv.append("--target-is-zero")
        self.runner.run([*argv, str(base.path), str(device)], timeout=3600)

    def _import_once(self, base: CachedImage) -> str:
        """`vmdisk_base_<name>` in the pool: imported under a temporary name, made read-only,
        then renamed, so a crash never leaves a parent that looks complete."""
        final = f"{BASE_PREFIX}{base.name}"
        if self.lvm.volume(self.vg, final) is not None:
            return final
        with self.deps.locks.exclusive(f"lvm-{base.name}"):
            volumes = self.lvm.volumes(self.vg)
            if any(lv.name == final for lv in volumes):
                return final
            for stale in volumes:
                if stale.name.startswith(f"{final}.tmp-"):
                    self._remove_quietly(stale.name)
            tmp = f"{final}.tmp-{secrets.token_hex(4)}"
            self.lvm.create_thin(
                self.vg, self.config.thin_pool or "", tmp, base.record.virtual_size
            )
            try:
                self._write_base(base, self.device(tmp), target_is_zero=True)
                self.lvm.set_read_only(self.vg, tmp)
                self.lvm.rename(self.vg, tmp, final)
            except BaseException:
                self._remove_quietly(tmp)
                raise
        return final

    def create_blank(self, disk: DiskPlan, target: Path) -> None:
        name = volume_name(disk.owner, disk.name)
        self._new_volume(name, disk.size or MiB)
        try:
            self.format_blank(disk, self.device(name))
        except BaseException:
            self._remove_quietly(name)
            raise

    def rescue_disk(self, disk: DiskPlan, target: Path, base: CachedImage) -> ProvisionedDisk:
        self.create_from_base(disk, target, base)
        return self.locate(disk)

    def describe(self, entry: DiskEntry) -> DiskState:
        if not isinstance(entry.source, BlockSource):
            return super().describe(entry)
        lv = self.lvm.volume(self.vg, entry.source.device.name)
        if lv is None:
            return DiskState(str(entry.source.device), None, None, None, error="no such volume")
        details: tuple[tuple[str, str | None], ...] = (
            ("volume_group", lv.vg),
            ("pool", lv.pool),
            ("origin", lv.origin),
        )
        return DiskState(str(lv.path), lv.size, lv.allocated, lv.origin, details=details)

    def resize(self, entry: DiskEntry, size: int) -> None:
        if not isinstance(entry.source, BlockSource):
            super().resize(entry, size)
            return
        lv = self.lvm.volume(self.vg, entry.source.device.name)
        if lv is not None and lv.sparse:
            # lvextend would grow the exception store, not what the guest sees.
            raise NotSupported(
                f"{entry.source.device} is a sparse (snapshot-backed) volume: it cannot grow",
                reason="not-supported",
            )
        self.lvm.extend(self.vg, entry.source.device.name, size)

    def check_present(self, entry: DiskEntry, base_dir: Path) -> None:
        if not isinstance(entry.source, BlockSource):
            super().check_present(entry, base_dir)
            return
        if self.lvm.volume(self.vg, entry.source.device.name) is None:
            raise DiskMissing(f"volume {entry.source.device} is missing", reason="disk-missing")

    def remove(self, entries: Sequence[DiskEntry]) -> None:
        names = [e.source.device.name for e in entries if isinstance(e.source, BlockSource)]
        self._clear_and_remove(names)

    def discard(self, disks: Sequence[DiskPlan]) -> None:
        self._clear_and_remove([volume_name(d.owner, d.name) for d in disks if d.role in _ROLES])

    def _clear_and_remove(self, names: list[str]) -> None:
        if not names:
            return
        volumes = {lv.name: lv for lv in self.lvm.volumes(self.vg)}
        for name in names:
            lv = volumes.get(name)
            if lv is None:
                continue
            if self._needs_clear(lv, volumes):
                self.clear(lv)
            self.lvm.remove(self.vg, name)

    def _needs_clear(self, lv: LogicalVolume, volumes: dict[str, LogicalVolume]) -> bool:
        if self.config.clear is VolumeClear.NONE:
            return False
        # A pool that hands out zeroed blocks leaves nothing old to read back.
        return not (lv.thin and lv.pool in volumes and volumes[lv.pool].zeroes)

    def clear(self, lv: LogicalVolume) -> None:
        """volume_clear over volume_clear_size MiB (0: all), before the volume is removed.
        A sparse volume's data is in its exception store: that is what is cleared (writing
        through the snapshot would fill the store instead). device-mapper holds the store
        open exclusively, so blkdiscard cannot open it; shred -n0 -z writes the zeros."""
        target, size = (lv.cow_device, lv.cow_size or 0) if lv.sparse else (lv.path, lv.size)
        if self.config.clear_size_mib:
            size = min(size, self.config.clear_size_mib * MiB)
        if self.config.clear is VolumeClear.SHRED:
            argv = ["shred", "-n", "3", "-s", str(size), str(target)]
        elif lv.sparse:
            argv = ["shred", "-n", "0", "-z", "-s", str(size), str(target)]
        else:
            argv = ["blkdiscard", "-z", "-o", "0", "-l", str(size), str(target)]
        self.runner.run(argv, timeout=3600)

    def _remove_quietly(self, name: str) -> None:
        # Cleanup after a failure: the first error is the one to report.
        with contextlib.suppress(Exception):
            self.lvm.remove(self.vg, name)

    def base_volumes(self) -> list[LogicalVolume]:
        """The imported bases in the pool, for the cache cleaner."""
        return [lv for lv in self.lvm.volumes(self.vg) if lv.name.startswith(BASE_PREFIX)]

    def prune_bases(
        self,
        files: CleanupPlan,
        in_use: Set[str],
        base_dir: Path,
        *,
        remove_unused: bool,
        dry_run: bool,
    ) -> VolumePrune:
        """Base LVs follow their `_base` entry: one goes when its entry is gone or goes in this
        pass, never while a snapshot of it exists or its base is in use."""
        out = VolumePrune(
            plan_base_volumes(self.lvm.volumes(self.vg), files, in_use, remove_unused)
        )
        if dry_run:
            return out
        for d in out.decisions:
            if d.action is not Action.REMOVE:
                continue
            try:
                self._remove_base(d, base_dir, out)
            except (OSError, VmdiskError) as exc:
                out.errors[d.name] = str(exc)  # one volume's failure never stops the pass
        return out

    def _remove_base(self, d: VolumeDecision, base_dir: Path, out: VolumePrune) -> None:
        """Under the entry's lock, which creators hold shared from finding the base to the
        snapshot: if the `_base` file is still gone and nothing snapshots the volume, nobody
        can be about to. (The base holds image bytes, no tenant's: no volume_clear.)"""
        with self.deps.locks.exclusive(d.base, timeout=60):
            snapshots = [lv.name for lv in self.lvm.volumes(self.vg) if lv.origin == d.name]
            if (base_dir / d.base).exists() or snapshots:
                out.kept_on_recheck.append(d.name)
                return
            self.lvm.remove(self.vg, d.name)
            out.removed.append(d.name)
            self.deps.locks.remove(d.base)  # held by us; its entry is gone


def plan_base_volumes(
    volumes: Sequence[LogicalVolume], files: CleanupPlan, in_use: Set[str], remove_unused: bool
) -> list[VolumeDecision]:
    """A decision for every `vmdisk_base_*` volume (temporary imports are left to the next
    import of their image, which removes them)."""
    snapshots: dict[str, list[str]] = {}
    for lv in volumes:
        if lv.origin:
            snapshots.setdefault(lv.origin, []).append(lv.name)
    entries = {d.name: d for d in files.decisions}
    out = []
    for lv in volumes:
        if not lv.name.startswith(BASE_PREFIX) or ".tmp-" in lv.name:
            continue
        base = lv.name[len(BASE_PREFIX) :]
        entry = entries.get(base)
        action, reason = _base_action(
            sorted(snapshots.get(lv.name, [])), base in in_use, entry, remove_unused
        )
        age = entry.age if entry else None
        out.append(VolumeDecision(lv.name, base, action, reason, age, lv.allocated))
    return out


def _base_action(
    snapshots: list[str], in_use: bool, entry: Decision | None, remove_unused: bool
) -> tuple[Action, str]:
    if snapshots:
        shown = ", ".join(snapshots[:3]) + (", ..." if len(snapshots) > 3 else "")
        return Action.KEEP, f"{len(snapshots)} thin snapshot(s) of it: {shown}"
    if in_use:
        return Action.KEEP, "its base is in use"
    if not remove_unused:
        return Action.KEEP, "unused; removal is turned off"
    if entry is None:
        return Action.REMOVE, "no snapshots, and its _base entry is gone"
    if entry.action is Action.REMOVE:
        return Action.REMOVE, f"no snapshots; its _base entry goes too ({entry.reason})"
    return Action.KEEP, f"follows its _base entry: {entry.reason}"
