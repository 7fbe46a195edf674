"""Real guests under TCG: every disk vmdisk made is proven from inside Linux.

The guest (tests/guest.py) mounts the root disk and prints its marker, mounts LABEL=ephemeral0,
turns on swap, prints meta_data.json from LABEL=config-2, writes a file and powers off.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import uuid as uuidlib
from pathlib import Path

import pytest

from tests.guest import GUEST_FILE, GUEST_TEXT, Guest
from tests.guests.libvirtd import libvirt_daemons
from tests.images import MiB, convert, debugfs_cat, ext4_image, sha256
from vmdisk.errors import DiskMissing
from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import BootOptions, ConfigDriveSpec, InstanceSpec
from vmdisk.settings import Flavor, load_settings

MARKER = b"marker-from-the-base-image"
FLAVOR = Flavor("boot", 1, 512, 1, ephemeral_gb=1, swap_mb=64)
CMDLINE = "console=ttyS0 quiet"


@pytest.fixture(scope="module")
def workdir(public_tmp: Path) -> Path:
    path = public_tmp / "boot"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def image(workdir: Path) -> Path:
    raw = ext4_image(workdir / "base.raw", {"marker.txt": MARKER + b"\n"}, size=32 * MiB)
    return convert(raw, "raw", workdir / "base.qcow2", "qcow2")


def make_host(workdir: Path, name: str) -> Host:
    settings = load_settings(None, env={}, overrides={"instances_path": str(workdir / name)})
    lib = dataclasses.replace(settings.libvirt, virt_type="qemu")
    return Host(dataclasses.replace(settings, libvirt=lib))


def create(host: Host, image: Path, name: str) -> Path:
    spec = InstanceSpec(
        name, str(uuidlib.uuid4()), FLAVOR, config_drive=ConfigDriveSpec(hostname=name)
    )
    return host.create_instance(spec, ImageRequest(str(image))).path


def assert_guest_saw_everything(console: str, uuid: str) -> None:
    assert f"GUEST: marker {MARKER.decode()}" in console, console
    assert "GUEST: ephemeral0 on /dev/vdb" in console
    assert "GUEST: swap on /dev/vdc" in console and "GUEST: swaps 1" in console
    meta_line = next(line for line in console.splitlines() if "GUEST: meta_data" in line)
    meta = json.loads(meta_line.split("GUEST: meta_data ", 1)[1])
    assert meta["uuid"] == uuid
    assert "GUEST: root written and unmounted" in console
    assert "GUEST: done" in console


def assert_disks_after(host: Host, inst_dir: Path, base_digest: str, tmp: Path) -> None:
    base = next(p for p in host.settings.base_dir.iterdir() if len(p.name) == 40)
    assert sha256(base) == base_digest  # the guest wrote only into its overlay
    flat = convert(inst_dir / "disk", "qcow2", tmp / "root-after.raw", "raw")
    assert debugfs_cat(flat, GUEST_FILE).decode().strip() == GUEST_TEXT
    assert debugfs_cat(flat, "/marker.txt") == MARKER + b"\n"


def test_boot_with_qemu(workdir: Path, guest: Guest, image: Path, tmp_path: Path) -> None:
    host = make_host(workdir, "qemu-instances")
    inst_dir = create(host, image, "qemu-guest")
    base = next(p for p in host.settings.base_dir.iterdir() if len(p.name) == 40)
    digest = sha256(base)
    result = host.boot(
        "qemu-guest",
        BootOptions(
            via="qemu", timeout=180, kernel=guest.kernel, initrd=guest.initrd, cmdline=CMDLINE
        ),
    )
    assert result.reason == "poweroff", result.console[-2000:]
    console = (inst_dir / "console.log").read_text(errors="replace")
    assert_guest_saw_everything(console, inst_dir.name)
    assert_disks_after(host, inst_dir, digest, tmp_path)


def test_wait_for_stops_the_guest(workdir: Path, guest: Guest, image: Path) -> None:
    host = make_host(workdir, "wait-instances")
    create(host, image, "waiter")
    result = host.boot(
        "waiter",
        BootOptions(
            via="qemu",
            timeout=180,
            wait_for="GUEST: up",
            kernel=guest.kernel,
            initrd=guest.initrd,
            cmdline=CMDLINE,
        ),
    )
    assert result.reason == "wait-for" and "GUEST: up" in result.console


def test_refuses_to_boot_without_its_base(workdir: Path, guest: Guest, image: Path) -> None:
    host = make_host(workdir, "gone-instances")
    create(host, image, "orphan")
    for path in host.settings.base_dir.iterdir():
        if len(path.name) == 40:
            path.unlink()
    with pytest.raises(DiskMissing) as err:
        host.boot("orphan", BootOptions(timeout=10, kernel=guest.kernel, initrd=guest.initrd))
    assert err.value.reason == "base-missing"


def test_boot_with_libvirt(workdir: Path, guest: Guest, image: Path, tmp_path: Path) -> None:
    host = make_host(workdir, "libvirt-instances")
    inst_dir = create(host, image, "libvirt-guest")
    base = next(p for p in host.settings.base_dir.iterdir() if len(p.name) == 40)
    digest = sha256(base)
    with libvirt_daemons():
        result = host.boot(
            "libvirt-guest",
            BootOptions(
                via="libvirt",
                timeout=240,
                kernel=guest.kernel,
                initrd=guest.initrd,
                cmdline=CMDLINE,
            ),
        )
        listed = subprocess.run(
            ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    assert result.reason == "poweroff", result.console[-2000:]
    assert "libvirt-guest" not in listed  # undefined afterwards (no --keep)
    console = (inst_dir / "console.log").read_text(errors="replace")
    assert_guest_saw_everything(console, inst_dir.name)
    assert_disks_after(host, inst_dir, digest, tmp_path)
