"""The provisioner over a fake backend (named as such): what it publishes, and what a failure
leaves. No process is started: the fake backend writes plain files, the config drive is
built in-process."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes import FakeRunner
from vmdisk import diskinfo
from vmdisk.backends import BACKENDS, BackendDeps, BackendInfo, DiskBackend
from vmdisk.backends.base import FileBackend
from vmdisk.errors import BackendError, FlavorDiskSmallerThanImage
from vmdisk.fsutil import ensure_real_dir
from vmdisk.imagecache.locks import Locks
from vmdisk.imagecache.records import BaseRecord, cache_name, write_record
from vmdisk.imagecache.store import CachedImage, ImageCache, ImageRequest
from vmdisk.imagecache.templates import TemplateCache
from vmdisk.instances import InstanceStore, read_record
from vmdisk.libvirt.domain import HostFacts
from vmdisk.model import BackendName, ConfigDriveSpec, DiskPlan, FileSource, InstanceSpec
from vmdisk.plan import plan_disks
from vmdisk.provision import Provisioner
from vmdisk.settings import Flavor, Settings
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import Limits
from vmdisk.units import GiB, MiB

IMAGE_ID = "fake://image"
UUID = "5d2c4a55-0000-4000-8000-00000000000a"


@dataclass
class Knobs:
    fail_on: str | None = None


class FakeFileBackend(FileBackend):
    """A FAKE backend: disks are small files saying what they were made from."""

    name = BackendName.QCOW2

    def __init__(self, deps: BackendDeps, fail_on: str | None = None) -> None:
        super().__init__(deps)
        self.fail_on = fail_on
        self.made: list[str] = []
        self.discarded: list[str] = []

    def create_from_base(self, disk: DiskPlan, target: Path, base: CachedImage) -> None:
        target.write_bytes(f"{disk.name} from {base.name}".encode())
        self.made.append(disk.name)

    def create_blank(self, disk: DiskPlan, target: Path) -> None:
        if disk.name == self.fail_on:
            raise BackendError(f"fake failure making {disk.name}")
        target.write_bytes(f"{disk.name} blank {disk.label}".encode())
        self.made.append(disk.name)

    def discard(self, disks: Sequence[DiskPlan]) -> None:
        self.discarded.extend(d.name for d in disks)


World = tuple[Provisioner, list["FakeFileBackend"], Settings, Knobs]


@pytest.fixture
def world(settings: Settings) -> World:
    for d in (settings.instances_path, settings.base_dir, settings.locks_dir):
        ensure_real_dir(d)
    base = settings.base_dir / cache_name(IMAGE_ID)
    base.write_bytes(b"benign raw bytes".ljust(1 * MiB, b"\0"))
    write_record(
        base,
        BaseRecord(
            IMAGE_ID, IMAGE_ID, None, "raw", "raw", 1 * MiB, 1 * MiB, "0" * 64, "0" * 64, "now"
        ),
    )
    runner = FakeRunner()
    qemu = QemuImg(runner, Limits(None, None))
    locks = Locks(settings.locks_dir)
    templates = TemplateCache(settings.base_dir, locks)
    made: list[FakeFileBackend] = []
    knobs = Knobs()

    def factory(deps: BackendDeps) -> DiskBackend:
        made.append(FakeFileBackend(deps, fail_on=knobs.fail_on))
        return made[-1]

    registry = {BackendName.QCOW2: BackendInfo(BackendName.QCOW2, "qcow2", False, True, factory)}
    prov = Provisioner(
        cache=ImageCache(settings.base_dir, locks, qemu),
        templates=templates,
        store=InstanceStore(settings.instances_path, locks, frozenset({"_base", "locks"})),
        qemu=qemu,
        runner=runner,
        host_facts=lambda: HostFacts("qemu"),
        deps=BackendDeps(qemu, runner, templates, locks, settings.libvirt),
        registry=registry,
    )
    return prov, made, settings, knobs


def _spec(root_gb: int = 1) -> InstanceSpec:
    return InstanceSpec(
        name="vm1",
        uuid=UUID,
        flavor=Flavor("t", 1, 256, root_gb, 1, 64),
        backend=BackendName.QCOW2,
        config_drive=ConfigDriveSpec(user_data=b"#cloud-config\n", hostname="vm1"),
    )


def test_publishes_disks_record_diskinfo_and_xml(world: World) -> None:
    prov, made, settings, _ = world
    plan = plan_disks(_spec(), settings, IMAGE_ID)
    inst = prov.create(plan, ImageRequest(IMAGE_ID, image_id=IMAGE_ID))
    path = settings.instances_path / UUID
    assert inst.path == path
    assert (path / "disk").read_bytes() == f"disk from {cache_name(IMAGE_ID)}".encode()
    assert (path / "disk.local").read_bytes() == b"disk.local blank ephemeral0"
    assert (path / "disk.config").read_bytes()[32768 + 1 : 32768 + 6] == b"CD001"
    record = read_record(path)
    assert record == inst.record and record.version == 2
    assert [d.name for d in record.disks] == ["disk", "disk.local", "disk.swap", "disk.config"]
    assert record.disk("disk") is not None
    assert record.disk("disk").source == FileSource(path / "disk")  # type: ignore[union-attr]
    assert json.loads((path / "disk.info").read_text()) == diskinfo.formats_of(record)
    xml = ET.parse(path / "libvirt.xml").getroot()
    assert [s.get("file") for s in xml.iter("source") if s.get("file")][:1] == [str(path / "disk")]
    assert sorted(made[0].made) == ["disk", "disk.local", "disk.swap"]
    assert not list(settings.instances_path.glob(".building-*"))


def test_a_failing_disk_leaves_nothing_and_discards(
    world: World,
) -> None:
    prov, made, settings, knobs = world
    knobs.fail_on = "disk.swap"
    plan = plan_disks(_spec(), settings, IMAGE_ID)
    with pytest.raises(BackendError, match=r"fake failure making disk\.swap"):
        prov.create(plan, ImageRequest(IMAGE_ID, image_id=IMAGE_ID))
    assert not (settings.instances_path / UUID).exists()
    assert not list(settings.instances_path.glob(".building-*"))
    assert not (settings.instances_path / ".names" / "vm1").exists()
    assert sorted(made[0].discarded) == sorted(d.name for d in plan.disks)


def test_image_larger_than_the_root_is_refused_before_any_disk(
    world: World,
) -> None:
    prov, made, settings, _ = world
    base = settings.base_dir / cache_name(IMAGE_ID)
    write_record(
        base,
        BaseRecord(
            IMAGE_ID, IMAGE_ID, None, "raw", "raw", 2 * GiB, 1 * MiB, "0" * 64, "0" * 64, "now"
        ),
    )
    with pytest.raises(FlavorDiskSmallerThanImage):
        prov.create(plan_disks(_spec(1), settings, IMAGE_ID), ImageRequest(IMAGE_ID, IMAGE_ID))
    assert made[0].made == []
    assert not (settings.instances_path / UUID).exists()


def test_builtin_registry_lists_every_backend_name() -> None:
    assert set(BACKENDS) == set(BackendName)
    assert all(info.name is name for name, info in BACKENDS.items())
