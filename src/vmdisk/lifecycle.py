"""What happens to an instance after create: show, resize (grow only), rescue, unrescue.

Every qemu-img call here takes its -f from disk.info, never from a probe (OSSA-2026-002).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmdisk import diskinfo
from vmdisk.backends.rbd import RbdBackend, RbdConfig, describe_images
from vmdisk.errors import InvalidRequest
from vmdisk.fsutil import copy_sparse, removing_on_error, temp_name
from vmdisk.imagecache.store import ResolvedImage
from vmdisk.instances import Instance
from vmdisk.model import BackendName
from vmdisk.plan import plan_rescue
from vmdisk.provision import Provisioner
from vmdisk.tools.headers import read_facts
from vmdisk.units import GiB

LEGACY_SUFFIX_DIGITS = 10


def describe(inst: Instance, rbd: RbdConfig | None = None) -> dict[str, Any]:
    """`show --json`: the record plus each disk's format, sizes and backing file (for RBD
    disks: pool, image and parent)."""
    formats = diskinfo.read(inst.path)
    disks = _rbd_disks(inst, rbd)
    for path, fmt in formats.items():
        entry: dict[str, Any] = {"name": Path(path).name, "path": path, "format": fmt}
        try:
            facts = read_facts(Path(path), fmt)
            entry.update(
                virtual_size=facts.virtual_size,
                allocated=facts.allocated,
                backing_file=facts.backing_file,
            )
        except (OSError, ValueError) as exc:
            entry.update(virtual_size=None, allocated=None, backing_file=None, error=str(exc))
        disks.append(entry)
    return {**summary(inst), "disks": disks, "rescue": inst.record.rescue is not None}


def _rbd_disks(inst: Instance, rbd: RbdConfig | None) -> list[dict[str, Any]]:
    specs = [str(d["rbd"]) for d in inst.record.disks if d.get("rbd")]
    if not specs:
        return []
    facts = describe_images(rbd, specs) if rbd is not None else {}
    out = []
    for disk in inst.record.disks:
        spec = disk.get("rbd")
        if not spec:
            continue
        found = facts.get(str(spec), {})
        pool, image = str(spec).split("/", 1)
        out.append(
            {
                "name": disk["name"],
                "path": f"rbd:{spec}",
                "format": "raw",
                "pool": pool,
                "image": image,
                "virtual_size": found.get("virtual_size"),
                "allocated": None,
                "backing_file": found.get("parent"),
                "parent": found.get("parent"),
            }
        )
    return out


def summary(inst: Instance) -> dict[str, Any]:
    r = inst.record
    return {
        "name": r.name,
        "uuid": r.uuid,
        "path": str(inst.path),
        "backend": r.backend,
        "flavor": r.flavor,
        "image_id": r.image_id,
        "image_base": r.image_base,
        "created_at": r.created_at,
        "os_type": r.os_type,
    }


def resize(
    prov: Provisioner, inst: Instance, root_gb: int | None, ephemeral_gb: int | None
) -> Instance:
    """Grow the root (and flavor ephemeral) disk; shrinking is refused as Nova refuses it."""
    flavor = dict(inst.record.flavor)
    formats = diskinfo.read(inst.path)
    backend = prov.backend(BackendName(inst.record.backend))
    changes = [("disk", "root_gb", root_gb), ("disk.local", "ephemeral_gb", ephemeral_gb)]
    rbd_specs = {str(d["name"]): str(d["rbd"]) for d in inst.record.disks if d.get("rbd")}
    for disk_name, key, new in changes:
        if new is None:
            continue
        if disk_name in rbd_specs and isinstance(backend, RbdBackend):
            _resize_rbd(backend, rbd_specs[disk_name], disk_name, new)
            flavor[key] = new
            continue
        path = inst.path / disk_name
        if str(path) not in formats:
            raise InvalidRequest(f"{inst.record.name} has no {disk_name} to resize")
        fmt = formats[str(path)]
        current = read_facts(path, fmt).virtual_size
        if new * GiB < current:
            raise InvalidRequest(
                f"unable to resize {disk_name} down: it is {current // GiB} GiB, asked for {new}",
                reason="shrink-refused",
            )
        ensure_legacy_backing(prov, path, fmt)
        if new * GiB > current:
            backend.resize(path, fmt, new * GiB)
        flavor[key] = new
    record = dataclasses.replace(inst.record, flavor=flavor)
    prov.store.write_record(inst.path, record)
    return Instance(inst.path, record)


def _resize_rbd(backend: RbdBackend, spec: str, disk_name: str, new_gb: int) -> None:
    current = describe_images(backend.config, [spec]).get(spec, {}).get("virtual_size")
    if not isinstance(current, int):
        raise InvalidRequest(f"RBD image {spec} of {disk_name} is missing", reason="disk-missing")
    if new_gb * GiB < current:
        raise InvalidRequest(
            f"unable to resize {disk_name} down: it is {current // GiB} GiB, asked for {new_gb}",
            reason="shrink-refused",
        )
    backend.resize_image(spec, new_gb * GiB)


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
    if inst.record.backend == "rbd":
        raise InvalidRequest(
            "rescue is not supported for RBD-backed instances yet", reason="not-supported"
        )
    image_id, _ = prov.cache.identify(request)
    backend_name = BackendName(inst.record.backend)
    disk = plan_rescue(inst.path, backend_name, image_id)
    backend = prov.backend(backend_name)
    target = temp_name(disk.path)
    with prov.cache.using(request) as base, removing_on_error(target):
        backend.create_from_base(disk, target, base)
        target.rename(disk.path)
    formats = diskinfo.read(inst.path)
    formats[str(disk.path)] = disk.format
    bases = [base.name]
    for name, boot_request in (boot_files or {}).items():
        target = inst.path / f"{name}.rescue"
        with prov.cache.using(boot_request) as cached, removing_on_error(target):
            copy_sparse(cached.path, target)
        formats[str(target)] = "raw"
        bases.append(cached.name)
    config = inst.path / "disk.config"
    if config.exists():
        shutil.copyfile(config, inst.path / "disk.config.rescue")
        formats[str(inst.path / "disk.config.rescue")] = "raw"
    diskinfo.write(inst.path, formats)
    record = dataclasses.replace(
        inst.record,
        rescue={"image_id": image_id, "base": base.name, "format": disk.format, "bases": bases},
    )
    prov.store.write_record(inst.path, record)
    return Instance(inst.path, record)


def unrescue(prov: Provisioner, inst: Instance) -> Instance:
    if inst.record.rescue is None:
        raise InvalidRequest(f"{inst.record.name} is not in rescue mode", reason="not-in-rescue")
    formats = diskinfo.read(inst.path)
    for name in ("disk.rescue", "disk.config.rescue", "kernel.rescue", "ramdisk.rescue"):
        (inst.path / name).unlink(missing_ok=True)
        formats.pop(str(inst.path / name), None)
    diskinfo.write(inst.path, formats)
    record = dataclasses.replace(inst.record, rescue=None)
    prov.store.write_record(inst.path, record)
    return Instance(inst.path, record)


def ensure_legacy_backing(prov: Provisioner, disk: Path, fmt: str) -> None:
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
    with prov.cache.locks.exclusive(path.name):
        if path.exists():
            return
        tmp = temp_name(path)
        with removing_on_error(tmp):
            copy_sparse(original, tmp)
            if int(digits) * GiB > original.stat().st_size:
                prov.qemu.resize(tmp, "raw", int(digits) * GiB)
            tmp.rename(path)
