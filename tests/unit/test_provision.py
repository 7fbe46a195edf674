"""The provisioner over a fake backend (tests/unit/provisioning.py): what it publishes, and
what a failure leaves. No process is started; the config drive is built in-process."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from tests.unit.provisioning import IMAGE_ID, UUID, World, image, make_world, put_base
from vmdisk import diskinfo
from vmdisk.backends import BACKENDS
from vmdisk.errors import BackendError, FlavorDiskSmallerThanImage
from vmdisk.imagecache.records import cache_name
from vmdisk.instances import read_record
from vmdisk.model import BackendName, ConfigDriveSpec, FileSource, InstanceSpec
from vmdisk.plan import plan_disks
from vmdisk.settings import Flavor, Settings
from vmdisk.units import GiB


@pytest.fixture
def world(settings: Settings) -> World:
    return make_world(settings)


def _spec(root_gb: int = 1) -> InstanceSpec:
    return InstanceSpec(
        name="vm1",
        uuid=UUID,
        flavor=Flavor("t", 1, 256, root_gb, 1, 64),
        backend=BackendName.QCOW2,
        config_drive=ConfigDriveSpec(user_data=b"#cloud-config\n", hostname="vm1"),
    )


def test_publishes_disks_record_diskinfo_and_xml(world: World) -> None:
    prov, made, settings = world.prov, world.backends, world.settings
    plan = plan_disks(_spec(), settings, IMAGE_ID)
    inst = prov.create(plan, image())
    path = settings.instances_path / UUID
    assert inst.path == path
    assert (path / "disk").read_bytes().rstrip(
        b"\0"
    ) == f"disk from {cache_name(IMAGE_ID)}".encode()
    assert (path / "disk.local").read_bytes().rstrip(b"\0") == b"disk.local blank ephemeral0"
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
    prov, made, settings = world.prov, world.backends, world.settings
    world.knobs.fail_on = "disk.swap"
    plan = plan_disks(_spec(), settings, IMAGE_ID)
    with pytest.raises(BackendError, match=r"fake failure making disk\.swap"):
        prov.create(plan, image())
    assert not (settings.instances_path / UUID).exists()
    assert not list(settings.instances_path.glob(".building-*"))
    assert not (settings.instances_path / ".names" / "vm1").exists()
    assert sorted(made[0].discarded) == sorted(d.name for d in plan.disks)


def test_image_larger_than_the_root_is_refused_before_any_disk(
    world: World,
) -> None:
    prov, made, settings = world.prov, world.backends, world.settings
    put_base(settings, virtual_size=2 * GiB)
    with pytest.raises(FlavorDiskSmallerThanImage):
        prov.create(plan_disks(_spec(1), settings, IMAGE_ID), image())
    assert made[0].made == []
    assert not (settings.instances_path / UUID).exists()


def test_builtin_registry_lists_every_backend_name() -> None:
    assert set(BACKENDS) == set(BackendName)
    assert all(info.name is name for name, info in BACKENDS.items())
