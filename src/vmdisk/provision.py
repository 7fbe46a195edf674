"""Make what plan_disks() decided: the side-effecting half of `vmdisk create`, in order.

Reads like Nova's _create_image: image base, root, ephemerals, swap, config drive, console.log,
disk.info, instance record, domain XML, then one rename publishes the instance.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from vmdisk import diskinfo
from vmdisk.backends import BackendDeps, BackendInfo, DiskBackend, open_backend
from vmdisk.backends.base import verify_base_size
from vmdisk.errors import InternalError
from vmdisk.fsutil import (
    copy_sparse,
    fallocate_supported,
    fsync_dir,
    open_exclusive,
    preallocate,
    require_space,
    space_error,
    write_atomic,
)
from vmdisk.imagecache import inspect
from vmdisk.imagecache.store import CachedImage, ImageCache, ResolvedImage
from vmdisk.imagecache.templates import TemplateCache
from vmdisk.inject import inject
from vmdisk.instances import RECORD, RECORD_MODE, Instance, InstanceStore
from vmdisk.libvirt.domain import HostFacts, domain_for, render
from vmdisk.model import (
    BackendName,
    DiskPlan,
    DiskRole,
    FileSource,
    InstancePlan,
    ProvisionedDisk,
)
from vmdisk.record import BootFile, DiskEntry, DriveInfo, InstanceRecord
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import Runner

_BOOT_FILES = (DiskRole.KERNEL, DiskRole.RAMDISK)


@dataclass(frozen=True, slots=True)
class Provisioner:
    """The collaborators provisioning needs, and nothing else from Settings."""

    cache: ImageCache
    templates: TemplateCache
    store: InstanceStore
    qemu: QemuImg
    runner: Runner
    host_facts: Callable[[], HostFacts]
    deps: BackendDeps
    registry: Mapping[BackendName, BackendInfo] | None = None  # None: the built-in BACKENDS

    def backend(self, name: BackendName) -> DiskBackend:
        """A backend for one operation: use it with `with` so its connections are closed."""
        return open_backend(name, self.deps, self.registry)

    def create(
        self,
        plan: InstancePlan,
        request: ResolvedImage,
        boot_files: Mapping[str, ResolvedImage] | None = None,
    ) -> Instance:
        """Make the instance; `boot_files` are the kernel/ramdisk requests the plan names."""
        try:
            with self.backend(plan.backend) as backend:
                return self._create_with(backend, plan, request, boot_files or {})
        except OSError as exc:
            mapped = space_error(exc, plan.instance_dir.parent, f"instance {plan.name}")
            if mapped is None:
                raise
            raise mapped from exc

    def _create_with(
        self,
        backend: DiskBackend,
        plan: InstancePlan,
        request: ResolvedImage,
        boot_files: Mapping[str, ResolvedImage],
    ) -> Instance:
        bases = [d.base for d in plan.disks if d.base]
        reserve = self.store.reserve(plan.name, plan.uuid, bases)
        # A backend may make the root without a local base (RBD cloning Glance's snapshot).
        local_base = backend.needs_base(plan.image_location)
        root = plan.disk("disk")
        root_size = root.size if root else None  # refused from the header, before it expands
        using = (
            self.cache.using(request, recheck=False, root_size=root_size)
            if local_base
            else nullcontext(None)
        )
        with reserve as build, using as base:
            if base is not None:
                verify_base_size(base.record.virtual_size, root.size if root else None)
                need = backend.local_bytes(plan, base)
                if need:
                    require_space(build, need, "the copies of the disks")
            located = {d.name: locate(backend, d) for d in plan.disks}
            record = instance_record(plan, base, request, located)
            xml = render(domain_for(record, plan.instance_dir, self.host_facts()))
            # The base's header re-check and the metadata depend only on the plan: do them
            # while qemu-img makes the disks. Nothing is published unless both succeed.
            meta = _Background(_check_and_write_metadata, base, build, record, xml)
            try:
                self.make_disks(plan, backend, build, base, boot_files)
                if plan.injection is not None and root is not None:
                    inject(
                        build / "disk",
                        root.format,
                        plan.injection,
                        self.runner,
                        tcg=self.host_facts().virt_type != "kvm",
                    )
                meta.result()
            except BaseException:
                meta.join()  # its writes must be over before the build directory is removed
                backend.discard(plan.disks)
                raise
            _sync_files(build, [n for n, p in located.items() if isinstance(p.source, FileSource)])
            self.store.publish(build, plan.instance_dir)
        return Instance(plan.instance_dir, record)

    def make_disks(
        self,
        plan: InstancePlan,
        backend: DiskBackend,
        build: Path,
        base: CachedImage | None,
        boot_files: Mapping[str, ResolvedImage],
    ) -> None:
        """Make every planned disk; independent of each other, so they are made concurrently
        (each is mostly a qemu-img or mkfs process, or the config drive's own CPU work)."""

        def make(disk: DiskPlan) -> None:
            target = build / disk.name
            if disk.role is DiskRole.CONFIG:
                self.make_config_drive(plan, target)
                backend.adopt(disk, target)
            elif disk.role in _BOOT_FILES:
                self.copy_boot_file(boot_files[disk.name], target)
            else:
                made = backend.ensure_disk(disk, target, base, plan.image_location)
                local = isinstance(made.source, FileSource)
                if local and plan.preallocate and disk.size and fallocate_supported(build):
                    preallocate(target, disk.size)

        if len(plan.disks) == 1:
            make(plan.disks[0])
            return
        with ThreadPoolExecutor(max_workers=len(plan.disks)) as pool:
            for future in [pool.submit(make, disk) for disk in plan.disks]:
                future.result()

    def copy_boot_file(self, request: ResolvedImage, target: Path) -> None:
        """Kernels and ramdisks are cached raw in _base and copied (reflink/sparse) per instance."""
        with self.cache.using(request) as cached:
            copy_sparse(cached.path, target)

    def make_config_drive(self, plan: InstancePlan, target: Path) -> None:
        from vmdisk.configdrive.builder import build_drive

        if plan.config_drive is None:
            raise InternalError("config drive planned without a spec")
        build_drive(plan, plan.config_drive, target, self.runner)


def locate(backend: DiskBackend, disk: DiskPlan) -> ProvisionedDisk:
    """Kernels and ramdisks are always files in the instance directory; the rest, the
    backend's to place."""
    if disk.role in _BOOT_FILES:
        return ProvisionedDisk(FileSource(disk.path), "raw")
    return backend.locate(disk)


def instance_record(
    plan: InstancePlan,
    base: CachedImage | None,
    request: ResolvedImage,
    located: Mapping[str, ProvisionedDisk],
) -> InstanceRecord:
    drive = plan.config_drive
    return InstanceRecord(
        name=plan.name,
        uuid=plan.uuid,
        backend=plan.backend,
        flavor=plan.flavor,
        image_id=plan.image_id,
        image_base=base.name if base is not None else plan.image_base,
        image_source=request.request.source,
        host=os.uname().nodename,
        os_type=plan.os_type,
        disks=tuple(disk_entry(d, located[d.name]) for d in plan.disks),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        config_drive=DriveInfo(drive.seed, drive.format) if drive else None,
        preallocate=plan.preallocate,
        kernel=_boot_entry(plan, "kernel"),
        ramdisk=_boot_entry(plan, "ramdisk"),
        cmdline=plan.cmdline,
        macs=plan.macs,
    )


def _boot_entry(plan: InstancePlan, name: str) -> BootFile | None:
    disk = plan.disk(name)
    if disk is None:
        return None
    return BootFile(plan.boot_ids[name], disk.base)


def disk_entry(disk: DiskPlan, made: ProvisionedDisk) -> DiskEntry:
    return DiskEntry(
        name=disk.name,
        role=disk.role,
        format=made.driver_format,
        source=made.source,
        size=disk.size,
        base=disk.base,
        label=disk.label,
        fs=disk.fs,
    )


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

    def join(self) -> None:
        self._thread.join()

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def _check_and_write_metadata(
    base: CachedImage | None, build: Path, record: InstanceRecord, xml: str
) -> None:
    """Re-check the base's header (it may predate a rule), then write the metadata.

    The build directory is itself temporary: its files need no rename of their own, only an
    fsync before the rename that publishes the instance.
    """
    if base is not None and base.record.format == "raw" and base.record.kind == "image":
        inspect.recheck_raw_base(base.path)
    (build / "console.log").touch(mode=0o640)
    contents = {
        diskinfo.FILENAME: (diskinfo.encode(record), 0o644),
        RECORD: (record.to_json(), RECORD_MODE),
        "libvirt.xml": (xml.encode(), 0o644),
    }
    for name, (data, mode) in contents.items():
        with os.fdopen(open_exclusive(build / name, mode), "wb") as fh:
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
    xml = render(domain_for(inst.record, inst.path, facts, rescue=inst.record.rescue is not None))
    write_atomic(inst.path / "libvirt.xml", xml.encode())
    return xml
