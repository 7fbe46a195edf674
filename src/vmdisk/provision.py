"""Make what plan_disks() decided: the side-effecting half of `vmdisk create`, in order.

Reads like Nova's _create_image: image base, root, ephemerals, swap, config drive, console.log,
disk.info, instance record, domain XML, then one rename publishes the instance.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vmdisk import diskinfo
from vmdisk.backends import DiskBackend, backend_class
from vmdisk.backends.base import verify_base_size
from vmdisk.backends.rbd import RbdBackend, RbdConfig, remove_instance_images
from vmdisk.errors import DiskMissing, InternalError
from vmdisk.fsutil import (
    copy_sparse,
    fallocate_supported,
    fsync_dir,
    preallocate,
    require_space,
    space_error,
    write_atomic,
)
from vmdisk.imagecache import inspect
from vmdisk.imagecache.store import CachedImage, ImageCache, ImageRequest
from vmdisk.imagecache.templates import TemplateCache
from vmdisk.inject import inject
from vmdisk.instances import RECORD, Instance, InstanceRecord, InstanceStore
from vmdisk.libvirt.domain import HostFacts, domain_for, render
from vmdisk.model import BackendName, DiskPlan, DiskRole, InstancePlan, flavor_dict
from vmdisk.tools.headers import qcow2_backing_file
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import Runner


@dataclass(frozen=True, slots=True)
class Provisioner:
    """The collaborators provisioning needs, and nothing else from Settings."""

    cache: ImageCache
    templates: TemplateCache
    store: InstanceStore
    qemu: QemuImg
    runner: Runner
    host_facts: Callable[[], HostFacts]
    rbd: RbdConfig = RbdConfig()

    def backend(self, name: BackendName, location: str | None = None) -> DiskBackend:
        if name is BackendName.RBD:
            return RbdBackend(
                self.qemu, self.runner, self.templates, self.rbd, self.cache.locks, location
            )
        return backend_class(name)(self.qemu, self.runner, self.templates)

    def create(
        self,
        plan: InstancePlan,
        request: ImageRequest,
        boot_files: Mapping[str, ImageRequest] | None = None,
    ) -> Instance:
        """Make the instance; `boot_files` are the kernel/ramdisk requests the plan names."""
        try:
            return self._create(plan, request, boot_files or {})
        except OSError as exc:
            mapped = space_error(exc, plan.instance_dir.parent, f"instance {plan.name}")
            if mapped is None:
                raise
            raise mapped from exc

    def _create(
        self, plan: InstancePlan, request: ImageRequest, boot_files: Mapping[str, ImageRequest]
    ) -> Instance:
        backend = self.backend(plan.backend, request.location)
        try:
            return self._create_with(backend, plan, request, boot_files)
        finally:
            if isinstance(backend, RbdBackend):
                backend.close()

    def _create_with(
        self,
        backend: DiskBackend,
        plan: InstancePlan,
        request: ImageRequest,
        boot_files: Mapping[str, ImageRequest],
    ) -> Instance:
        bases = [d.base for d in plan.disks if d.base]
        reserve = self.store.reserve(plan.name, plan.uuid, bases)
        # An RBD root cloned from Glance's own snapshot needs no local base at all.
        clone = isinstance(backend, RbdBackend) and backend.can_clone()
        using = contextlib.nullcontext(None) if clone else self.cache.using(request, recheck=False)
        with reserve as build, using as base:
            root = plan.disk("disk")
            if base is not None:
                verify_base_size(base, root.size if root else None)
            if plan.backend is BackendName.FLAT and base is not None:
                require_space(build, _flat_bytes(plan, base), "the flat copies of the disks")
            formats = {str(d.path): d.format for d in plan.disks if d.local}
            record = instance_record(plan, base, request)
            xml = render(domain_for(record, plan.instance_dir, formats, self.host_facts()))
            # The base's header re-check and the metadata depend only on the plan: do them
            # while qemu-img makes the disks. Nothing is published unless both succeed.
            meta = _Background(_check_and_write_metadata, base, build, formats, record, xml)
            try:
                self.make_disks(plan, backend, build, base, boot_files)
                root_disk = plan.disk("disk")
                if plan.injection is not None and root_disk is not None:
                    inject(
                        build / "disk",
                        root_disk.format,
                        plan.injection,
                        self.runner,
                        tcg=self.host_facts().virt_type != "kvm",
                    )
            except BaseException:
                remove_instance_images(self.rbd, [d.rbd for d in plan.disks if d.rbd])
                raise
            meta.result()
            _sync_files(build, [d.name for d in plan.disks if d.local])
            self.store.publish(build, plan.instance_dir)
        return Instance(plan.instance_dir, record)

    def make_disks(
        self,
        plan: InstancePlan,
        backend: DiskBackend,
        build: Path,
        base: CachedImage | None,
        boot_files: Mapping[str, ImageRequest],
    ) -> None:
        """Make every planned disk; independent of each other, so they are made concurrently
        (each is mostly a qemu-img or mkfs process, or the config drive's own CPU work)."""

        def make(disk: DiskPlan) -> None:
            target = build / disk.name
            if disk.role is DiskRole.CONFIG:
                self.make_config_drive(plan, target)
                if not disk.local and isinstance(backend, RbdBackend):
                    backend.adopt(disk, target)
            elif disk.role in (DiskRole.KERNEL, DiskRole.RAMDISK):
                self.copy_boot_file(boot_files[disk.name], target)
            else:
                backend.ensure_disk(disk, target, base)
                if plan.preallocate and disk.size and fallocate_supported(build):
                    preallocate(target, disk.size)

        if len(plan.disks) == 1:
            make(plan.disks[0])
            return
        with ThreadPoolExecutor(max_workers=len(plan.disks)) as pool:
            for future in [pool.submit(make, disk) for disk in plan.disks]:
                future.result()

    def copy_boot_file(self, request: ImageRequest, target: Path) -> None:
        """Kernels and ramdisks are cached raw in _base and copied (reflink/sparse) per instance."""
        with self.cache.using(request) as cached:
            copy_sparse(cached.path, target)

    def make_config_drive(self, plan: InstancePlan, target: Path) -> None:
        from vmdisk.configdrive.builder import build_drive

        if plan.config_drive is None:
            raise InternalError("config drive planned without a spec")
        build_drive(plan, plan.config_drive, target, self.runner)


def instance_record(
    plan: InstancePlan, base: CachedImage | None, request: ImageRequest
) -> InstanceRecord:
    return InstanceRecord(
        name=plan.name,
        uuid=plan.uuid,
        backend=str(plan.backend),
        flavor=flavor_dict(plan.flavor),
        image_id=plan.image_id,
        image_base=base.name if base is not None else plan.image_base,
        image_source=request.source,
        host=os.uname().nodename,
        os_type=str(plan.os_type),
        disks=[_disk_entry(d) for d in plan.disks],
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        config_drive=(
            {"seed": plan.config_drive.seed, "format": plan.config_drive.format}
            if plan.config_drive
            else None
        ),
        extra={"preallocate": plan.preallocate},
        kernel=_boot_entry(plan, "kernel"),
        ramdisk=_boot_entry(plan, "ramdisk"),
        cmdline=plan.cmdline,
    )


def _boot_entry(plan: InstancePlan, name: str) -> dict[str, object] | None:
    disk = plan.disk(name)
    if disk is None:
        return None
    return {"id": plan.boot_ids[name], "base": disk.base}


def _disk_entry(disk: DiskPlan) -> dict[str, object]:
    return {
        "name": disk.name,
        "role": str(disk.role),
        "format": disk.format,
        "size": disk.size,
        "base": disk.base,
        "label": disk.label,
        "fs": disk.fs,
        "rbd": disk.rbd,
    }


def _flat_bytes(plan: InstancePlan, base: CachedImage) -> int:
    """What flat copies can take: the base's allocation plus any preallocated sizes."""
    total = base.path.stat().st_blocks * 512
    if plan.preallocate:
        total += sum(d.size or 0 for d in plan.disks)
    return total


class _Background:
    """Run one call on a thread; result() waits and re-raises what it raised."""

    def __init__(self, fn: Callable[..., None], *args: object) -> None:
        self._error: BaseException | None = None

        def target() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # handed to the caller in result()
                self._error = exc

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def _check_and_write_metadata(
    base: CachedImage, build: Path, formats: dict[str, str], record: InstanceRecord, xml: str
) -> None:
    """Re-check the base's header (it may predate a rule), then write the metadata.

    The build directory is itself temporary: its files need no rename of their own, only an
    fsync before the rename that publishes the instance.
    """
    if base is not None and base.record.format == "raw" and base.record.kind == "image":
        inspect.recheck_raw_base(base.path)
    (build / "console.log").touch(mode=0o640)
    contents = {
        diskinfo.FILENAME: (json.dumps(formats) + "\n").encode(),
        RECORD: record.to_json(),
        "libvirt.xml": xml.encode(),
    }
    for name, data in contents.items():
        with open(build / name, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def _sync_files(directory: Path, names: list[str]) -> None:
    """fsync the disks we made, then the directory: the rename that follows is the commit."""
    for name in names:
        fd = os.open(directory / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(directory)


def write_domain_xml(inst: Instance, facts: HostFacts) -> str:
    """(Re)write libvirt.xml for the instance as it stands: the rescue variant while rescued."""
    xml = render(
        domain_for(
            inst.record,
            inst.path,
            diskinfo.read(inst.path),
            facts,
            rescue=inst.record.rescue is not None,
        )
    )
    write_atomic(inst.path / "libvirt.xml", xml.encode())
    return xml


def check_disks_present(inst: Instance, base_dir: Path) -> None:
    """Every disk in disk.info exists, and so does every qcow2 backing file."""
    for path, fmt in diskinfo.read(inst.path).items():
        disk = Path(path)
        if not disk.exists():
            raise DiskMissing(
                f"disk {disk} of {inst.record.name} is missing", reason="disk-missing"
            )
        if fmt == "qcow2":
            backing = qcow2_backing_file(disk)
            if backing and not Path(backing).exists():
                raise DiskMissing(
                    f"backing file {backing} of {disk.name} is gone from {base_dir}",
                    reason="base-missing",
                    hint="the base was removed by hand; vmdisk cache prune never removes one "
                    "in use",
                )
