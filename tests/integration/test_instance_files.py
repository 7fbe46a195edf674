"""What an instance directory holds and refuses: file modes for secrets, planted symlinks,
and what failed creates leave behind. Real qemu-img and mkfs; tampering done by hand."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest

from tests.images import MiB, convert, ext4_image, run
from vmdisk.errors import BackendError, FlavorDiskSmallerThanImage, InvalidRequest
from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import BackendName, ConfigDriveSpec, InstanceSpec
from vmdisk.settings import Flavor, Settings

UUID = "0b7c2f1e-5a44-4d3e-8c21-7a9f0e1d2c3b"
FLAVOR = Flavor("t1", 1, 256, 1, ephemeral_gb=0, swap_mb=0)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("img")
    raw = ext4_image(d / "root.raw", {"marker.txt": b"vmdisk-marker\n"}, size=48 * MiB)
    return convert(raw, "raw", d / "root.qcow2", "qcow2")


@pytest.fixture
def host(settings: Settings) -> Host:
    return Host(settings)


def spec(**kw: object) -> InstanceSpec:
    base = InstanceSpec("vm1", UUID, FLAVOR, config_drive=ConfigDriveSpec(admin_pass="s3cret"))
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_files_holding_secrets_are_private(host: Host, image: Path) -> None:
    inst = host.create_instance(spec(), ImageRequest(str(image)))
    assert mode(inst.path / "instance.json") == 0o600
    assert mode(inst.path / "disk.config") == 0o600
    assert b"s3cret" in (inst.path / "disk.config").read_bytes()
    host.resize_instance("vm1", 2, None)  # rewriting the record keeps it private
    assert mode(inst.path / "instance.json") == 0o600


def test_rescue_replaces_a_planted_symlink_instead_of_writing_through_it(
    host: Host, image: Path, tmp_path: Path
) -> None:
    inst = host.create_instance(spec(), ImageRequest(str(image)))
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (inst.path / "disk.config.rescue").symlink_to(victim)
    host.rescue_instance("vm1", None)
    assert victim.read_bytes() == b"precious\n"
    copy = inst.path / "disk.config.rescue"
    assert not copy.is_symlink() and copy.read_bytes() == (inst.path / "disk.config").read_bytes()


def test_resize_refuses_a_disk_that_is_a_symlink(host: Host, image: Path, tmp_path: Path) -> None:
    inst = host.create_instance(spec(backend=BackendName.FLAT), ImageRequest(str(image)))
    victim = tmp_path / "victim.raw"
    victim.write_bytes(b"\0" * MiB)
    (inst.path / "disk").unlink()
    (inst.path / "disk").symlink_to(victim)
    with pytest.raises(BackendError) as err:
        host.resize_instance("vm1", 3, None)
    assert err.value.reason == "symlink"
    assert victim.stat().st_size == MiB


def test_a_symlinked_name_index_is_refused(host: Host, image: Path, tmp_path: Path) -> None:
    host.prepare()
    outside = tmp_path / "outside"
    outside.mkdir()
    (host.settings.instances_path / ".names").symlink_to(outside)
    with pytest.raises(InvalidRequest) as err:
        host.create_instance(spec(), ImageRequest(str(image)))
    assert err.value.reason == "symlink"
    assert list(outside.iterdir()) == []


def test_a_failed_create_leaves_no_lock_build_or_name(
    host: Host, image: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(big), "2G")
    host.create_instance(spec(name="ok", config_drive=None), ImageRequest(str(image)))
    host.fetch_image(ImageRequest(str(big)))
    locks_before = sorted(p.name for p in host.settings.locks_dir.iterdir())
    other = "2b7c2f1e-5a44-4d3e-8c21-7a9f0e1d2c3b"
    with pytest.raises(FlavorDiskSmallerThanImage):
        host.create_instance(spec(name="big", uuid=other), ImageRequest(str(big)))
    root = host.settings.instances_path
    assert sorted(p.name for p in host.settings.locks_dir.iterdir()) == locks_before
    assert not list(root.glob(".building-*")) and not (root / other).exists()
    assert sorted(p.name for p in (root / ".names").iterdir()) == ["ok"]


def test_prune_reaps_name_entries_whose_instance_is_gone(host: Host, image: Path) -> None:
    host.create_instance(spec(config_drive=None), ImageRequest(str(image)))
    names = host.settings.instances_path / ".names"
    (names / "ghost").write_text("3b7c2f1e-5a44-4d3e-8c21-7a9f0e1d2c3b")  # as a crash leaves it
    host.prune(dry_run=False)
    assert sorted(p.name for p in names.iterdir()) == ["vm1"]
