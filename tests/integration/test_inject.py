"""File injection through libguestfs (its appliance under TCG), read back without mounting."""

from __future__ import annotations

import dataclasses
import uuid as uuidlib
from pathlib import Path

import pytest

from tests.images import MiB, convert, debugfs_cat, ext4_image, run, sha256
from vmdisk.errors import BackendError, InvalidRequest
from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.inject import Injection
from vmdisk.model import InstanceSpec
from vmdisk.settings import Flavor, Settings

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIInjectedKeyMaterialxxxxxxxxxxxxxxxxxxxxxxxxx op@host"
HOST_ETC_PROBE = "vmdisk-injection-probe-e2c1"


def host_with(settings: Settings, partition: int) -> Host:
    lib = dataclasses.replace(
        settings.libvirt,
        inject_partition=partition,
        inject_key=True,
        inject_password=True,
        virt_type="qemu",
    )
    return Host(dataclasses.replace(settings, libvirt=lib))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    tree = {"etc/shadow": b"root:*:19000:0:99999:7:::\n", "etc/hostname": b"guest\n"}
    raw = ext4_image(tmp_path / "root.raw", tree, size=32 * MiB)
    (tmp_path / "root.tree" / "opt").mkdir()
    (tmp_path / "root.tree" / "opt" / "etc-link").symlink_to("/etc")  # a hostile guest link
    run("mkfs.ext4", "-q", "-F", "-d", tmp_path / "root.tree", raw)
    return raw


def stat_mode(raw: Path, path: str) -> str:
    out = run("debugfs", "-R", f"stat {path}", raw).stdout
    return out.split("Mode:", 1)[1].split()[0]


def test_inject_key_password_and_files(settings: Settings, image: Path, tmp_path: Path) -> None:
    assert not Path("/etc", HOST_ETC_PROBE).exists()
    host = host_with(settings, 0)
    base_digest = sha256(image)
    injection = Injection(
        partition=0,
        keys=(KEY,),
        password="s3cret",
        files=(
            (f"/opt/etc-link/{HOST_ETC_PROBE}", b"through a guest symlink\n"),
            ("/srv/app/config.ini", b"[app]\nx = 1\n"),
        ),
    )
    inst = host.create_instance(
        InstanceSpec("inj", str(uuidlib.uuid4()), Flavor("f", 1, 64, 1), injection=injection),
        ImageRequest(str(image)),
    )
    flat = convert(inst.path / "disk", "qcow2", tmp_path / "after.raw", "raw")
    assert debugfs_cat(flat, "/root/.ssh/authorized_keys").decode().strip() == KEY
    assert stat_mode(flat, "/root/.ssh/authorized_keys") == "0600"
    assert stat_mode(flat, "/root/.ssh") == "0700"
    shadow = debugfs_cat(flat, "/etc/shadow").decode()
    assert shadow.startswith("root:$6$") and "s3cret" not in shadow
    # The link pointed at /etc: the write landed in the guest's /etc, never the host's.
    assert debugfs_cat(flat, f"/etc/{HOST_ETC_PROBE}") == b"through a guest symlink\n"
    assert not Path("/etc", HOST_ETC_PROBE).exists()
    assert debugfs_cat(flat, "/srv/app/config.ini") == b"[app]\nx = 1\n"
    base = host.settings.base_dir / inst.record.image_base
    assert sha256(base) == base_digest  # only the overlay was written


def test_injection_refusals(settings: Settings, image: Path) -> None:
    off = Host(settings)
    spec = InstanceSpec(
        "x",
        str(uuidlib.uuid4()),
        Flavor("f", 1, 64, 1),
        injection=Injection(partition=1, files=(("/a", b"1"),)),
    )
    with pytest.raises(BackendError) as err:  # the image is a whole-disk file system
        host_with(settings, 1).create_instance(spec, ImageRequest(str(image)))
    assert err.value.reason == "no-filesystem"
    assert off.instances() == []
    from vmdisk.inject import guest_path

    for bad in ("relative", "/a/../b", "/a/./b", "/a//b"):
        with pytest.raises(InvalidRequest):
            guest_path(bad)
