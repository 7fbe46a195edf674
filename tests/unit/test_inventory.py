"""The join of instances and cache entries: in-use sets, the cache listing and one prune
pass, over real files in tmp_path and the FAKE file backend (no process is started)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from tests.unit.provisioning import IMAGE_ID, UUID, World, image, make_world, put_base
from tests.unit.test_file_backends import qcow2_header
from vmdisk import inventory
from vmdisk.imagecache.cleaner import CleanupPolicy
from vmdisk.imagecache.records import cache_name
from vmdisk.model import BackendName, InstanceSpec
from vmdisk.plan import plan_disks
from vmdisk.settings import Flavor, Settings

UNUSED = "fake://unused"
NOW_AGES = CleanupPolicy(True, 0, 0, 0, 0)


@pytest.fixture
def world(settings: Settings) -> World:
    w = make_world(settings)
    spec = InstanceSpec("vm1", UUID, Flavor("t", 1, 256, 1, 0, 0), backend=BackendName.FLAT)
    w.prov.create(plan_disks(spec, settings, IMAGE_ID), image())
    put_base(settings, UNUSED)
    old = 1_000_000_000
    for name in (cache_name(IMAGE_ID), cache_name(UNUSED)):
        os.utime(settings.base_dir / name, (old, old))
    return w


def test_in_use_counts_records_and_backing_files(world: World) -> None:
    store, base_dir = world.prov.store, world.settings.base_dir
    assert cache_name(IMAGE_ID) in inventory.bases_in_use(store, base_dir)
    assert cache_name(UNUSED) not in inventory.bases_in_use(store, base_dir)


def test_a_backing_file_alone_protects_a_base(world: World) -> None:
    """A qcow2 disk whose record does not name the base (Nova's scan finds it the same way)."""
    inst = world.prov.store.all()[0]
    record = inst.record
    disk = inst.path / "disk"
    disk.write_bytes(qcow2_header(str(world.settings.base_dir / cache_name(UNUSED))))
    entry = dataclasses.replace(record.disks[0], format="qcow2")
    world.prov.store.write_record(inst.path, dataclasses.replace(record, disks=(entry,)))
    assert cache_name(UNUSED) in inventory.bases_in_use(world.prov.store, world.settings.base_dir)


def test_cache_listing_names_users(world: World) -> None:
    listing = inventory.list_cache(world.prov.store, world.settings.base_dir)
    users = {e.image_id: e.users for e in listing.entries}
    assert users == {IMAGE_ID: ["vm1"], UNUSED: []}
    assert listing.to_dict()["total_allocated"] == listing.total_allocated > 0


def test_prune_removes_only_the_unused_base(world: World) -> None:
    store, base_dir, locks = world.prov.store, world.settings.base_dir, world.prov.cache.locks
    plan, result = inventory.prune(store, base_dir, locks, NOW_AGES, dry_run=True)
    assert result is None and (base_dir / cache_name(UNUSED)).exists()
    removing = {d.name for d in plan.decisions if d.action.name == "REMOVE"}
    assert cache_name(UNUSED) in removing and cache_name(IMAGE_ID) not in removing
    plan, result = inventory.prune(store, base_dir, locks, NOW_AGES)
    assert result is not None and cache_name(UNUSED) in result.removed
    assert not (base_dir / cache_name(UNUSED)).exists()
    assert (base_dir / cache_name(IMAGE_ID)).exists()
    assert (store.root / inventory.REGISTRY).exists()
