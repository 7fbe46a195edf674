"""A provisioner over a FAKE file backend, for unit tests: no process is ever started.

The fake backend writes sparse files of the planned size whose first bytes say what they
were made from; the base is a small benign raw file with a hand-written record.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.fakes import FakeRunner, FakeSource
from vmdisk.backends import BackendDeps, BackendInfo, DiskBackend
from vmdisk.backends.base import FileBackend
from vmdisk.errors import BackendError
from vmdisk.fsutil import ensure_real_dir
from vmdisk.imagecache.records import BaseRecord, cache_name, write_record
from vmdisk.imagecache.registry import resolved
from vmdisk.imagecache.store import CachedImage, ImageCache, ImageRequest, ResolvedImage
from vmdisk.imagecache.templates import TemplateCache
from vmdisk.instances import InstanceStore
from vmdisk.libvirt.domain import HostFacts
from vmdisk.locks import Locks
from vmdisk.model import BackendName, DiskPlan
from vmdisk.provision import Provisioner
from vmdisk.settings import Settings
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import Limits
from vmdisk.units import GiB, MiB

IMAGE_ID = "fake://image"
UUID = "5d2c4a55-0000-4000-8000-00000000000a"


@dataclass
class Knobs:
    fail_on: str | None = None


class FakeFileBackend(FileBackend):
    """A FAKE backend: disks are sparse files saying what they were made from."""

    name = BackendName.QCOW2

    def __init__(self, deps: BackendDeps, fail_on: str | None = None) -> None:
        super().__init__(deps)
        self.fail_on = fail_on
        self.made: list[str] = []
        self.discarded: list[str] = []

    def create_from_base(self, disk: DiskPlan, target: Path, base: CachedImage) -> None:
        _write(target, f"{disk.name} from {base.name}".encode(), disk.size or MiB)
        self.made.append(disk.name)

    def create_blank(self, disk: DiskPlan, target: Path) -> None:
        if disk.name == self.fail_on:
            raise BackendError(f"fake failure making {disk.name}")
        _write(target, f"{disk.name} blank {disk.label}".encode(), disk.size or MiB)
        self.made.append(disk.name)

    def discard(self, disks: Sequence[DiskPlan]) -> None:
        self.discarded.extend(d.name for d in disks)


def _write(path: Path, head: bytes, size: int) -> None:
    with open(path, "xb") as fh:
        fh.write(head)
        os.ftruncate(fh.fileno(), size)


@dataclass
class World:
    prov: Provisioner
    backends: list[FakeFileBackend]
    settings: Settings
    knobs: Knobs
    runner: FakeRunner


def image(image_id: str = IMAGE_ID) -> ResolvedImage:
    """The request for a base put_base() made, resolved against a fake source."""
    return resolved(ImageRequest(image_id, image_id=image_id), FakeSource(b"", name=image_id))


def put_base(settings: Settings, image_id: str = IMAGE_ID, virtual_size: int = MiB) -> Path:
    base = settings.base_dir / cache_name(image_id)
    base.write_bytes(b"benign raw bytes".ljust(MiB, b"\0"))
    write_record(
        base,
        BaseRecord(
            image_id, image_id, None, "raw", "raw", virtual_size, MiB, "0" * 64, "0" * 64, "now"
        ),
    )
    return base


def make_world(settings: Settings, disk_format: str = "raw") -> World:
    for d in (settings.instances_path, settings.base_dir, settings.locks_dir):
        ensure_real_dir(d)
    put_base(settings)
    runner = FakeRunner()
    qemu = QemuImg(runner, Limits(None, None))
    locks = Locks(settings.locks_dir)
    templates = TemplateCache(settings.base_dir, locks)
    made: list[FakeFileBackend] = []
    knobs = Knobs()

    def factory(deps: BackendDeps) -> DiskBackend:
        made.append(FakeFileBackend(deps, fail_on=knobs.fail_on))
        return made[-1]

    info = BackendInfo(BackendName.QCOW2, disk_format, False, True, factory)
    flat = BackendInfo(BackendName.FLAT, "raw", False, True, factory)
    prov = Provisioner(
        cache=ImageCache(settings.base_dir, locks, qemu),
        templates=templates,
        store=InstanceStore(settings.instances_path, locks, frozenset({"_base", "locks"})),
        qemu=qemu,
        runner=runner,
        host_facts=lambda: HostFacts("qemu"),
        deps=BackendDeps(qemu, runner, templates, locks, settings.libvirt),
        registry={BackendName.QCOW2: info, BackendName.FLAT: flat},
    )
    return World(prov, made, settings, knobs, runner)


__all__ = ["GiB", "IMAGE_ID", "UUID", "FakeFileBackend", "World", "image", "make_world", "put_base"]
