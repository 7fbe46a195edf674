"""The RBD backend over a FAKE of the librados/librbd bindings (tests/fakeceph.py).

No cluster and no process: the fake keeps images in memory and qemu-img/mkfs go to a
FakeRunner. What is checked is vmdisk's use of RBD: names, one import per base, protected
parents, clones, and that removal never touches a parent.
"""

from __future__ import annotations

import dataclasses
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakeceph import FakeCeph, FakeImage
from tests.fakes import FakeRunner
from tests.unit.provisioning import image
from vmdisk.backends import BackendDeps
from vmdisk.backends.rbd import BASE_PREFIX, RbdBackend
from vmdisk.errors import BackendError, NotSupported
from vmdisk.fsutil import ensure_real_dir
from vmdisk.imagecache.records import BaseRecord, cache_name, write_record
from vmdisk.imagecache.store import CachedImage, ImageCache
from vmdisk.imagecache.templates import TemplateCache
from vmdisk.instances import InstanceStore, read_record
from vmdisk.libvirt.domain import HostFacts
from vmdisk.locks import Locks
from vmdisk.model import (
    BackendName,
    ConfigDriveSpec,
    DiskPlan,
    DiskRole,
    FileSource,
    InstanceSpec,
    NetworkAuth,
    NetworkSource,
)
from vmdisk.plan import plan_disks
from vmdisk.provision import Provisioner
from vmdisk.record import DiskEntry
from vmdisk.settings import Flavor, Settings
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import Limits
from vmdisk.units import GiB, MiB

UUID = "5d2c4a55-0000-4000-8000-00000000000b"
OTHER = "5d2c4a55-0000-4000-8000-00000000000c"
IMAGE_ID = "fake://image"


@pytest.fixture
def ceph(monkeypatch: pytest.MonkeyPatch) -> FakeCeph:
    fake = FakeCeph()
    fake.pool("vms")
    monkeypatch.setitem(sys.modules, "rados", fake.rados)
    monkeypatch.setitem(sys.modules, "rbd", fake.rbd)
    return fake


@pytest.fixture
def rbd_settings(settings: Settings, tmp_path: Path) -> Settings:
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nmon host = [v2:10.0.0.1:3300,v1:10.0.0.1:6789], 10.0.0.2\n")
    lib = dataclasses.replace(
        settings.libvirt,
        images_type="rbd",
        images_rbd_ceph_conf=str(conf),
        rbd_user="cinder",
        rbd_secret_uuid="11111111-2222-3333-4444-555555555555",
    )
    out = dataclasses.replace(settings, libvirt=lib, force_raw_images=True)
    for d in (out.instances_path, out.base_dir, out.locks_dir):
        ensure_real_dir(d)
    return out


def _deps(settings: Settings, runner: FakeRunner) -> BackendDeps:
    locks = Locks(settings.locks_dir)
    qemu = QemuImg(runner, Limits(None, None))
    return BackendDeps(
        qemu, runner, TemplateCache(settings.base_dir, locks), locks, settings.libvirt
    )


@pytest.fixture
def backend(ceph: FakeCeph, rbd_settings: Settings) -> Iterator[RbdBackend]:
    made = RbdBackend(_deps(rbd_settings, FakeRunner()))
    with made:
        yield made
    assert ceph.shutdowns == len(ceph.connects)


def _disk(
    name: str = "disk",
    role: DiskRole = DiskRole.ROOT,
    size: int | None = 8 * MiB,
    owner: str = UUID,
    base: str | None = None,
) -> DiskPlan:
    return DiskPlan(name, role, Path("/nowhere") / name, "raw", size, base, owner=owner)


def _base(settings: Settings, data: bytes = b"boot sector") -> CachedImage:
    path = settings.base_dir / cache_name(IMAGE_ID)
    path.write_bytes(data.ljust(1 * MiB, b"\0"))
    record = BaseRecord(
        IMAGE_ID, IMAGE_ID, None, "raw", "raw", 1 * MiB, 1 * MiB, "0" * 64, "0" * 64, "now"
    )
    write_record(path, record)
    return CachedImage(IMAGE_ID, path.name, path, record, True)


def _entry(name: str, owner: str = UUID) -> DiskEntry:
    return DiskEntry(name, DiskRole.ROOT, "raw", NetworkSource("rbd", f"vms/{owner}_{name}"))


def test_locate_names_the_pool_image_monitors_and_auth(
    backend: RbdBackend, rbd_settings: Settings
) -> None:
    made = backend.locate(_disk())
    assert made.driver_format == "raw"
    assert made.source == NetworkSource(
        "rbd",
        f"vms/{UUID}_disk",
        (("10.0.0.1", 6789), ("10.0.0.2", 6789)),
        NetworkAuth("cinder", "11111111-2222-3333-4444-555555555555"),
        Path(rbd_settings.libvirt.images_rbd_ceph_conf),
    )
    kernel = _disk("kernel", DiskRole.KERNEL)
    assert backend.locate(kernel).source == FileSource(kernel.path)


def test_locate_without_user_has_no_auth(ceph: FakeCeph, rbd_settings: Settings) -> None:
    lib = dataclasses.replace(rbd_settings.libvirt, rbd_user=None)
    settings = dataclasses.replace(rbd_settings, libvirt=lib)
    source = RbdBackend(_deps(settings, FakeRunner())).locate(_disk()).source
    assert isinstance(source, NetworkSource) and source.auth is None


def test_needs_base_unless_glance_is_in_this_cluster(backend: RbdBackend, ceph: FakeCeph) -> None:
    assert backend.needs_base(f"rbd://{ceph.fsid}/images/abc/snap") is False
    assert backend.needs_base("rbd://another-fsid/images/abc/snap") is True
    assert backend.needs_base("http://glance/v2/images/abc") is True
    assert backend.needs_base(None) is True
    assert ceph.connects[0]["rados_id"] == "cinder"


def test_root_from_a_local_base_is_imported_once_and_cloned(
    backend: RbdBackend, ceph: FakeCeph, rbd_settings: Settings, tmp_path: Path
) -> None:
    base = _base(rbd_settings)
    backend.ensure_disk(_disk(), tmp_path / "disk", base)
    parent = f"{BASE_PREFIX}{base.name}"
    writes = ceph.writes_to(BASE_PREFIX)
    assert writes >= 1
    backend.ensure_disk(_disk(owner=OTHER), tmp_path / "disk2", base)
    assert ceph.writes_to(BASE_PREFIX) == writes
    vms = ceph.pools["vms"]
    assert vms[parent].snaps == {"snap": True}
    assert vms[f"{UUID}_disk"].parent == ("vms", parent, "snap")
    assert vms[f"{OTHER}_disk"].parent == ("vms", parent, "snap")
    assert vms[f"{UUID}_disk"].size == 8 * MiB
    assert vms[f"{UUID}_disk"].read(0, 11) == b"boot sector"
    assert not [n for n in vms if ".tmp-" in n]


def test_a_failed_import_leaves_no_base(
    backend: RbdBackend, ceph: FakeCeph, rbd_settings: Settings, tmp_path: Path
) -> None:
    base = _base(rbd_settings)
    ceph.fail_writes = True
    with pytest.raises(BackendError):
        backend.ensure_disk(_disk(), tmp_path / "disk", base)
    assert not [n for n in ceph.pools["vms"] if n.startswith(BASE_PREFIX)]
    ceph.fail_writes = False
    backend.ensure_disk(_disk(), tmp_path / "disk", base)
    assert f"{BASE_PREFIX}{base.name}" in ceph.pools["vms"]


def test_stale_temporaries_are_removed_before_an_import(
    backend: RbdBackend, ceph: FakeCeph, rbd_settings: Settings, tmp_path: Path
) -> None:
    base = _base(rbd_settings)
    stale = f"{BASE_PREFIX}{base.name}.tmp-dead"
    ceph.rbd.RBD().create(backend_ioctx(ceph), stale, MiB)
    ceph.pools["vms"][stale].snaps["snap"] = True
    backend.ensure_disk(_disk(), tmp_path / "disk", base)
    assert stale not in ceph.pools["vms"]


def backend_ioctx(ceph: FakeCeph) -> object:
    return ceph.rados.Rados().open_ioctx("vms")


def test_root_cloned_from_glance_in_the_same_cluster(
    backend: RbdBackend, ceph: FakeCeph, tmp_path: Path
) -> None:
    ceph.pool("images")["glance-id"] = FakeImage(4 * MiB, {}, {"snap": True})
    location = f"rbd://{ceph.fsid}/images/glance-id/snap"
    made = backend.ensure_disk(_disk(), tmp_path / "disk", None, location)
    assert isinstance(made.source, NetworkSource)
    assert ceph.pools["vms"][f"{UUID}_disk"].parent == ("images", "glance-id", "snap")
    assert ceph.pools["vms"][f"{UUID}_disk"].size == 8 * MiB
    assert ceph.writes == []
    with pytest.raises(NotSupported):
        backend.ensure_disk(_disk(owner=OTHER), tmp_path / "d", None, "rbd://x/images/g/snap")


def test_ephemeral_and_swap_from_templates(
    ceph: FakeCeph, rbd_settings: Settings, tmp_path: Path
) -> None:
    runner = FakeRunner()
    with RbdBackend(_deps(rbd_settings, runner)) as backend:
        eph = _disk("disk.local", DiskRole.EPHEMERAL, 2 * MiB, base="ephemeral_0_abc")
        swap = _disk("disk.swap", DiskRole.SWAP, 1 * MiB, base="swap_1")
        backend.ensure_disk(eph, tmp_path / "l", None)
        backend.ensure_disk(swap, tmp_path / "s", None)
        backend.ensure_disk(dataclasses.replace(eph, owner=OTHER), tmp_path / "l2", None)
        with pytest.raises(ValueError):
            backend.ensure_disk(_disk("disk.eph1", DiskRole.EPHEMERAL), tmp_path / "x", None)
    programs = [argv[0] for argv, _ in runner.seen]
    assert programs.count("mkswap") == 1
    assert len([p for p in programs if p.startswith("mkfs")]) == 1  # the template is shared
    vms = ceph.pools["vms"]
    assert vms[f"{UUID}_disk.local"].parent == ("vms", f"{BASE_PREFIX}ephemeral_0_abc", "snap")
    assert vms[f"{OTHER}_disk.local"].parent == ("vms", f"{BASE_PREFIX}ephemeral_0_abc", "snap")
    assert vms[f"{UUID}_disk.swap"].parent == ("vms", f"{BASE_PREFIX}swap_1", "snap")
    assert (rbd_settings.base_dir / "swap_1").exists()


def test_adopt_imports_the_file_and_unlinks_it(
    backend: RbdBackend, ceph: FakeCeph, tmp_path: Path
) -> None:
    local = tmp_path / "disk.config"
    local.write_bytes(b"iso9660".ljust(64 * 1024, b"\0") + b"tail")
    disk = _disk("disk.config", DiskRole.CONFIG, None)
    ceph.rbd.RBD().create(backend_ioctx(ceph), f"{UUID}_disk.config", 1)  # a leftover
    made = backend.adopt(disk, local)
    assert not local.exists()
    assert isinstance(made.source, NetworkSource)
    image = ceph.pools["vms"][f"{UUID}_disk.config"]
    assert image.size == 64 * 1024 + 4
    assert image.read(0, 7) == b"iso9660" and image.read(64 * 1024, 4) == b"tail"


def test_describe_resize_and_remove(
    backend: RbdBackend, ceph: FakeCeph, rbd_settings: Settings, tmp_path: Path
) -> None:
    base = _base(rbd_settings)
    backend.ensure_disk(_disk(), tmp_path / "disk", base)
    parent = f"{BASE_PREFIX}{base.name}"
    state = backend.describe(_entry("disk"))
    assert state.location == f"rbd:vms/{UUID}_disk"
    assert state.virtual_size == 8 * MiB
    assert state.backing_file == f"vms/{parent}@snap"
    assert dict(state.details) == {
        "pool": "vms",
        "image": f"{UUID}_disk",
        "parent": f"vms/{parent}@snap",
    }
    missing = backend.describe(_entry("gone"))
    assert missing.virtual_size is None and missing.backing_file is None
    backend.resize(_entry("disk"), 1 * GiB)
    assert ceph.pools["vms"][f"{UUID}_disk"].size == 1 * GiB
    backend.resize(_entry("disk"), 1 * MiB)  # never shrinks
    assert ceph.pools["vms"][f"{UUID}_disk"].size == 1 * GiB
    backend.check_present(_entry("disk"), rbd_settings.base_dir)
    backend.ensure_disk(_disk(owner=OTHER), tmp_path / "d2", base)
    backend.remove([_entry("disk"), _entry("never-made")])
    assert f"{UUID}_disk" not in ceph.pools["vms"]
    assert {parent, f"{OTHER}_disk"} <= set(ceph.pools["vms"])


def test_discard_removes_only_the_instances_images(
    backend: RbdBackend, ceph: FakeCeph, rbd_settings: Settings, tmp_path: Path
) -> None:
    base = _base(rbd_settings)
    backend.ensure_disk(_disk(), tmp_path / "disk", base)
    backend.ensure_disk(_disk(owner=OTHER), tmp_path / "d2", base)
    backend.discard([_disk(), _disk("disk.swap", DiskRole.SWAP), _disk("kernel", DiskRole.KERNEL)])
    assert sorted(ceph.pools["vms"]) == sorted([f"{BASE_PREFIX}{base.name}", f"{OTHER}_disk"])
    backend.discard([])
    backend.remove([])


def test_a_missing_pool_and_an_unreachable_cluster_are_backend_errors(
    ceph: FakeCeph, rbd_settings: Settings, tmp_path: Path
) -> None:
    lib = dataclasses.replace(rbd_settings.libvirt, images_rbd_pool="nope")
    settings = dataclasses.replace(rbd_settings, libvirt=lib)
    backend = RbdBackend(_deps(settings, FakeRunner()))
    with backend, pytest.raises(BackendError, match="pool 'nope' does not exist"):
        backend.ensure_disk(_disk(), tmp_path / "disk", _base(settings))
    ceph.refuse_connect = True
    backend = RbdBackend(_deps(rbd_settings, FakeRunner()))
    with backend, pytest.raises(BackendError, match="cannot connect to Ceph"):
        backend.needs_base(f"rbd://{ceph.fsid}/images/a/snap")


def test_provisioner_publishes_an_instance_on_rbd(ceph: FakeCeph, rbd_settings: Settings) -> None:
    _base(rbd_settings, b"root bytes")
    runner = FakeRunner()
    qemu = QemuImg(runner, Limits(None, None))
    locks = Locks(rbd_settings.locks_dir)
    templates = TemplateCache(rbd_settings.base_dir, locks)
    prov = Provisioner(
        cache=ImageCache(rbd_settings.base_dir, locks, qemu),
        templates=templates,
        store=InstanceStore(rbd_settings.instances_path, locks, frozenset({"_base", "locks"})),
        qemu=qemu,
        runner=runner,
        host_facts=lambda: HostFacts("qemu"),
        deps=BackendDeps(qemu, runner, templates, locks, rbd_settings.libvirt),
    )
    spec = InstanceSpec(
        name="vm1",
        uuid=UUID,
        flavor=Flavor("t", 1, 256, 1, 1, 64),
        config_drive=ConfigDriveSpec(user_data=b"#cloud-config\n", hostname="vm1"),
    )
    plan = plan_disks(spec, rbd_settings, IMAGE_ID)
    assert plan.backend is BackendName.RBD
    inst = prov.create(plan, image())
    record = read_record(inst.path)
    assert [d.name for d in record.disks] == ["disk", "disk.local", "disk.swap", "disk.config"]
    assert all(isinstance(d.source, NetworkSource) for d in record.disks)
    vms = ceph.pools["vms"]
    assert vms[f"{UUID}_disk"].size == 1 * GiB
    assert vms[f"{UUID}_disk"].read(0, 10) == b"root bytes"
    assert vms[f"{UUID}_disk.config"].read(32768 + 1, 5) == b"CD001"
    assert not (inst.path / "disk.config").exists()
    xml = ET.parse(inst.path / "libvirt.xml").getroot()
    disks = [d for d in xml.iter("disk") if d.get("device") == "disk"]
    assert disks and all(d.get("type") == "network" for d in disks)
    names = {s.get("name") for s in xml.iter("source") if s.get("protocol") == "rbd"}
    assert f"vms/{UUID}_disk" in names
