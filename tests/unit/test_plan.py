from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmdisk.errors import InvalidRequest
from vmdisk.model import BackendName, ConfigDriveSpec, DiskRole, InstanceSpec, OsType
from vmdisk.plan import choose_backend, ephemeral_base_name, plan_disks
from vmdisk.settings import Flavor, Settings
from vmdisk.units import GiB, MiB

UUID = "0d5e6b61-602d-4589-84b3-bf038267614d"
FLAVOR = Flavor("t", 1, 512, 10, ephemeral_gb=20, swap_mb=512)


def spec(**kw: object) -> InstanceSpec:
    return dataclasses.replace(InstanceSpec("vm", UUID, FLAVOR), **kw)  # type: ignore[arg-type]


def test_qcow2_layout_is_novas(settings: Settings) -> None:
    plan = plan_disks(spec(), settings, "img-1")
    d = {disk.name: disk for disk in plan.disks}
    inst = settings.instances_path / UUID
    assert list(d) == ["disk", "disk.local", "disk.swap"]
    assert d["disk"].path == inst / "disk" and d["disk"].size == 10 * GiB
    assert d["disk"].base == hashlib.sha1(b"img-1").hexdigest()
    assert d["disk.local"].base == "ephemeral_20_" + hashlib.md5(b"ext4").hexdigest()[:7]
    assert d["disk.local"].label == "ephemeral0" and d["disk.local"].fs == "ext4"
    assert d["disk.swap"].base == "swap_512" and d["disk.swap"].size == 512 * MiB
    assert {x.format for x in plan.disks} == {"qcow2"}


def test_ephemeral_hashes_follow_nova() -> None:
    assert (
        ephemeral_base_name(20, "vfat", None)
        == "ephemeral_20_" + hashlib.md5(b"vfat").hexdigest()[:7]
    )
    assert ephemeral_base_name(1, "ext4", "custom mkfs command") == "ephemeral_1_a74d253"


def test_root_gb_zero_means_image_size(settings: Settings) -> None:
    plan = plan_disks(spec(flavor=Flavor("z", 1, 1, 0)), settings, "img")
    assert plan.disks[0].size is None and len(plan.disks) == 1


def test_extra_ephemerals_replace_disk_local(settings: Settings) -> None:
    plan = plan_disks(spec(ephemerals=(1, 2)), settings, "img")
    eph = [d for d in plan.disks if d.role is DiskRole.EPHEMERAL]
    assert [d.name for d in eph] == ["disk.eph0", "disk.eph1"]
    assert [d.label for d in eph] == ["ephemeral0", "ephemeral1"]
    assert eph[0].base != eph[1].base  # different labels, different templates


def test_os_type_picks_file_system(settings: Settings) -> None:
    assert plan_disks(spec(os_type=OsType.WINDOWS), settings, "i").disks[1].fs == "ntfs"
    assert plan_disks(spec(os_type=OsType.OTHER), settings, "i").disks[1].fs == "vfat"
    custom = dataclasses.replace(
        settings, virt_mkfs=("default=mkfs.ext3 -L %(fs_label)s %(target)s",)
    )
    disk = plan_disks(spec(), custom, "i").disks[1]
    assert disk.mkfs_command and disk.base == ephemeral_base_name(20, "ext4", disk.mkfs_command)


def test_flat_backend_makes_blank_disks_in_place(settings: Settings) -> None:
    plan = plan_disks(spec(backend=BackendName.FLAT), settings, "img")
    assert plan.backend is BackendName.FLAT
    assert [d.format for d in plan.disks] == ["raw", "raw", "raw"]
    assert [d.base for d in plan.disks[1:]] == [None, None]


def test_backend_defaults_follow_images_type_and_use_cow(settings: Settings) -> None:
    assert choose_backend(None, settings) is BackendName.QCOW2
    no_cow = dataclasses.replace(settings, use_cow_images=False)
    assert choose_backend(None, no_cow) is BackendName.FLAT
    raw = dataclasses.replace(
        settings, libvirt=dataclasses.replace(settings.libvirt, images_type="raw")
    )
    assert choose_backend(None, raw) is BackendName.FLAT
    assert choose_backend(BackendName.QCOW2, no_cow) is BackendName.QCOW2


def test_config_drive_is_planned_raw(settings: Settings) -> None:
    plan = plan_disks(spec(config_drive=ConfigDriveSpec()), settings, "img")
    drive = plan.disk("disk.config")
    assert drive is not None and drive.format == "raw" and drive.label == "config-2"
    forced = dataclasses.replace(settings, force_config_drive=True)
    assert plan_disks(spec(), forced, "img").disk("disk.config") is not None


@pytest.mark.parametrize(
    "flavor", [Flavor("x", 0, 512, 1), Flavor("x", 1, 512, -1), Flavor("x", 1, 512, 1, swap_mb=-5)]
)
def test_bad_sizes_refused(settings: Settings, flavor: Flavor) -> None:
    with pytest.raises(InvalidRequest):
        plan_disks(spec(flavor=flavor), settings, "img")


@given(
    root=st.integers(0, 2000),
    eph=st.integers(0, 2000),
    swap=st.integers(0, 65536),
    extras=st.lists(st.integers(1, 500), max_size=4),
    image_id=st.text(min_size=1, max_size=50),
    backend=st.sampled_from(list(BackendName)[:2]),
)
def test_plan_invariants(
    root: int, eph: int, swap: int, extras: list[int], image_id: str, backend: BackendName
) -> None:
    settings = Settings(instances_path=Path("/srv/instances"))
    s = spec(flavor=Flavor("p", 1, 1, root, eph, swap), ephemerals=tuple(extras), backend=backend)
    plan = plan_disks(s, settings, image_id)
    again = plan_disks(s, settings, image_id)
    assert plan == again  # deterministic, cache names included
    inst = settings.instances_path / UUID
    for disk in plan.disks:
        assert disk.path.parent == inst  # every planned path is inside the instance directory
        assert disk.size is None or disk.size >= 0
    assert plan.disks[0].size == (root * GiB or None)
    sizes = [d.size for d in plan.disks if d.role is DiskRole.EPHEMERAL]
    assert sizes == [g * GiB for g in (extras or ([eph] if eph else []))]
