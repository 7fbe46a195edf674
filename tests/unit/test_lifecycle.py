"""resize, rescue, unrescue and show over the FAKE file backend: what the record says after
each, and what is refused. No process is started."""

from __future__ import annotations

import json
import os

import pytest

from tests.unit.provisioning import IMAGE_ID, UUID, World, image, make_world, put_base
from vmdisk import diskinfo, lifecycle
from vmdisk.errors import InvalidRequest, ShrinkRefused
from vmdisk.imagecache.records import cache_name
from vmdisk.instances import Instance, read_record
from vmdisk.model import BackendName, ConfigDriveSpec, DiskRole, FileSource, InstanceSpec
from vmdisk.plan import plan_disks
from vmdisk.settings import Flavor, Settings
from vmdisk.units import GiB

RESCUE_ID = "fake://rescue"


@pytest.fixture
def world(settings: Settings) -> World:
    return make_world(settings)


@pytest.fixture
def inst(world: World) -> Instance:
    spec = InstanceSpec(
        "vm1",
        UUID,
        Flavor("t", 1, 256, 1, 1, 0),
        backend=BackendName.FLAT,  # raw files: the fake's disks have real sizes to read
        config_drive=ConfigDriveSpec(hostname="vm1"),
    )
    plan = plan_disks(spec, world.settings, IMAGE_ID)
    return world.prov.create(plan, image())


def test_resize_grows_and_records_the_flavor(world: World, inst: Instance) -> None:
    grown = lifecycle.resize(world.prov, inst, 3, 2)
    assert (grown.record.flavor.root_gb, grown.record.flavor.ephemeral_gb) == (3, 2)
    assert read_record(inst.path) == grown.record
    sizes = [argv[-1] for argv, _ in world.runner.seen if argv[1] == "resize"]
    assert sizes == [str(3 * GiB), str(2 * GiB)]


def test_resize_refuses_to_shrink_or_a_missing_disk(world: World, inst: Instance) -> None:
    os.truncate(inst.path / "disk", 2 * GiB)
    with pytest.raises(ShrinkRefused) as err:
        lifecycle.resize(world.prov, inst, 1, None)
    assert err.value.reason == "shrink-refused" and err.value.exit_code == 2
    (inst.path / "disk.local").unlink()
    with pytest.raises(InvalidRequest, match="is missing"):
        lifecycle.resize(world.prov, inst, None, 3)


def test_rescue_then_unrescue(world: World, inst: Instance) -> None:
    put_base(world.settings, RESCUE_ID)
    rescued = lifecycle.rescue(world.prov, inst, image(RESCUE_ID))
    state = rescued.record.rescue
    assert state is not None and state.base == cache_name(RESCUE_ID)
    assert [d.name for d in state.disks] == ["disk.rescue", "disk.config.rescue"]
    assert state.disks[0].role is DiskRole.RESCUE
    assert (inst.path / "disk.config.rescue").read_bytes() == (
        inst.path / "disk.config"
    ).read_bytes()
    formats = json.loads((inst.path / "disk.info").read_text())
    assert formats == diskinfo.formats_of(rescued.record)
    assert str(inst.path / "disk.rescue") in formats
    assert cache_name(RESCUE_ID) in rescued.record.bases()
    with pytest.raises(InvalidRequest, match="already in rescue"):
        lifecycle.rescue(world.prov, rescued, image(RESCUE_ID))
    back = lifecycle.unrescue(world.prov, rescued)
    assert back.record.rescue is None and not (inst.path / "disk.rescue").exists()
    assert str(inst.path / "disk.rescue") not in json.loads((inst.path / "disk.info").read_text())
    with pytest.raises(InvalidRequest, match="not in rescue"):
        lifecycle.unrescue(world.prov, back)


def test_describe_lists_every_disk_with_its_facts(world: World, inst: Instance) -> None:
    with world.prov.backend(inst.record.backend) as backend:
        data = lifecycle.describe(inst, backend)
    assert data["flavor"]["root_gb"] == 1 and data["backend"] == "flat"
    disks = {d["name"]: d for d in data["disks"]}
    assert disks["disk"]["virtual_size"] == GiB and disks["disk"]["format"] == "raw"
    assert disks["disk.config"]["path"] == str(inst.path / "disk.config")
    assert isinstance(inst.record.disk("disk.config").source, FileSource)  # type: ignore[union-attr]
    assert data["rescue"] is False
