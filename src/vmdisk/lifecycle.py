"""What happens to an instance after create: show, resize (grow only), rescue, unrescue.

Everything here reads the instance record; each disk is handled by the instance's backend,
and every qemu-img call takes its -f from the record, never from a probe (OSSA-2026-002).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmdisk.backends import DiskBackend
from vmdisk.errors import InvalidRequest, NotSupported, ShrinkRefused
from vmdisk.fsutil import copy_sparse, removing_on_error, temp_name
from vmdisk.imagecache.store import ResolvedImage
from vmdisk.instances import Instance
from vmdisk.model import DiskRole, FileSource, flavor_dict
from vmdisk.plan import plan_rescue
from vmdisk.provision import Provisioner
from vmdisk.record import DiskEntry, RescueState
from vmdisk.units import GiB

RESCUE_FILES = ("disk.rescue", "disk.config.rescue", "kernel.rescue", "ramdisk.rescue")


def describe(inst: Instance, backend: DiskBackend) -> dict[str, Any]:
    """`show --json`: the record's summary plus each disk as it is now."""
    disks = [backend.describe(d).to_dict(d) for d in inst.record.all_disks()]
    return {**summary(inst), "disks": disks, "rescue": inst.record.rescue is not None}


def summary(inst: Instance) -> dict[str, Any]:
    r = inst.record
    return {
        "name": r.name,
        "uuid": r.uuid,
        "path": str(inst.path),
        "backend": str(r.backend),
        "flavor": flavor_dict(r.flavor),
        "image_id": r.image_id,
        "image_base": r.image_base,
        "created_at": r.created_at,
        "os_type": str(r.os_type),
    }


def resize(
    prov: Provisioner, inst: Instance, root_gb: int | None, ephemeral_gb: int | None
) -> Instance:
    """Grow the root (and flavor ephemeral) disk; shrinking is refused as Nova refuses it."""
    flavor = inst.record.flavor
    with prov.backend(inst.record.backend) as backend:
        for disk_name, key, new in (
            ("disk", "root_gb", root_gb),
            ("disk.local", "ephemeral_gb", ephemeral_gb),
        ):
            if new is None:
                continue
            entry = inst.record.disk(disk_name)
            if entry is None:
                raise InvalidRequest(f"{inst.record.name} has no {disk_name} to resize")
            _grow(backend, entry, new)
            if key == "root_gb":
                flavor = dataclasses.replace(flavor, root_gb=new)
            else:
                flavor = dataclasses.replace(flavor, ephemeral_gb=new)
    record = dataclasses.replace(inst.record, flavor=flavor)
    prov.store.write_record(inst.path, record)
    return Instance(inst.path, record)


def _grow(backend: DiskBackend, entry: DiskEntry, new_gb: int) -> None:
    current = backend.describe(entry).virtual_size
    if current is None:
        raise InvalidRequest(f"{entry.name} is missing", reason="disk-missing")
    if new_gb * GiB < current:
        raise ShrinkRefused(
            f"unable to resize {entry.name} down: it is {current // GiB} GiB, asked for {new_gb}",
            reason="shrink-refused",
        )
    if new_gb * GiB > current:
        backend.resize(entry, new_gb * GiB)


def rescue(
    prov: Provisioner,
    inst: Instance,
    request: ResolvedImage,
    boot_files: Mapping[str, ResolvedImage] | None = None,
) -> Instance:
    """disk.rescue from the rescue image; the instance's own disk is never touched.

    A rescue image that brings its own kernel/ramdisk gets kernel.rescue/ramdisk.rescue.
    """
    if inst.record.rescue is not None:
        raise InvalidRequest(f"{inst.record.name} is already in rescue mode", reason="in-rescue")
    image_id, _ = prov.cache.identify(request)
    disk = plan_rescue(inst.path, inst.record.backend, image_id, inst.record.uuid)
    target = temp_name(disk.path)
    with prov.backend(inst.record.backend) as backend:
        if not backend.supports_rescue:
            raise NotSupported(
                f"rescue is not supported for {backend.name.upper()}-backed instances yet",
                reason="not-supported",
            )
        with prov.cache.using(request) as base, removing_on_error(target):
            made = backend.rescue_disk(disk, target, base)
            if target.exists():  # file backends write the temporary; others place it themselves
                target.rename(disk.path)
    disks = [DiskEntry(disk.name, DiskRole.RESCUE, made.driver_format, made.source, base=base.name)]
    bases = [base.name]
    for name, boot_request in (boot_files or {}).items():
        path = inst.path / f"{name}.rescue"
        with prov.cache.using(boot_request) as cached:
            _copy_into(cached.path, path)
        disks.append(
            DiskEntry(path.name, DiskRole(name), "raw", FileSource(path), base=cached.name)
        )
        bases.append(cached.name)
    config = inst.record.disk("disk.config")
    if config is not None and isinstance(config.source, FileSource):
        copy = inst.path / "disk.config.rescue"
        _copy_into(config.source.path, copy)
        disks.append(DiskEntry(copy.name, DiskRole.CONFIG, "raw", FileSource(copy)))
    state = RescueState(image_id, base.name, disk.format, tuple(disks), tuple(bases))
    record = dataclasses.replace(inst.record, rescue=state)
    prov.store.write_record(inst.path, record)
    return Instance(inst.path, record)


def _copy_into(src: Path, dst: Path) -> None:
    """Copy through a new temporary name, then rename: whatever sits at `dst` (a planted
    symlink included) is replaced, never written through."""
    tmp = temp_name(dst)
    with removing_on_error(tmp):
        copy_sparse(src, tmp)
        os.replace(tmp, dst)


def unrescue(prov: Provisioner, inst: Instance) -> Instance:
    if inst.record.rescue is None:
        raise InvalidRequest(f"{inst.record.name} is not in rescue mode", reason="not-in-rescue")
    record = dataclasses.replace(inst.record, rescue=None)
    prov.store.write_record(inst.path, record)
    with prov.backend(inst.record.backend) as backend:
        backend.remove(list(inst.record.rescue.disks))
    for name in RESCUE_FILES:
        (inst.path / name).unlink(missing_ok=True)
    return Instance(inst.path, record)
