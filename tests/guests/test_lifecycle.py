"""Issue 18 for real: the cached Debian cloud-init guest, made by `vmdisk create`, lived with
through the CLI under TCG, once with `--via qemu` and once with `--via libvirt`.

create (--config-drive --ssh-key) -> start -> wait --ssh -> ssh: hostname, swap, MAC ->
delete refused while running -> stop (ACPI) -> e2fsck -n of the root, host side -> delete.
Times from create to ssh answering are printed (run with -s to see them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guests import debian
from tests.guests.libvirtd import libvirt_daemons, virsh

pytestmark = [pytest.mark.guest, pytest.mark.timeout(900)]
TIMINGS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    """World-readable (libvirt runs qemu as libvirt-qemu, which cannot enter pytest's tmp)."""
    path = Path(tempfile.mkdtemp(prefix="vmdisk-lifecycle-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def image() -> debian.DebianImage:
    return debian.get_image()


@pytest.fixture(scope="module")
def keypair(world: Path) -> Path:
    key, _ = debian.make_keypair(world)
    return key


class Cli:
    def __init__(self, instances: Path) -> None:
        self.instances = instances

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "vmdisk", "--instances-path", str(self.instances), *args]
        env = {**os.environ, "VMDISK_LIBVIRT__VIRT_TYPE": "qemu"}  # KVM does not work here
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"vmdisk {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def json(self, *args: str) -> object:
        return json.loads(self("--json", *args).stdout)


def create(cli: Cli, image: debian.DebianImage, name: str, key: Path, *extra: str) -> Path:
    cli(
        "create", name,
        "--image", str(image.disk), "--format", "qcow2",
        "--kernel", str(image.kernel), "--ramdisk", str(image.initrd),
        "--cmdline", image.append.replace(" quiet", ""),
        "--vcpus", "1", "--ram-mb", "1024", "--root-gb", "4", "--swap-mb", "256",
        "--config-drive", "--ssh-key", str(key.with_suffix(".pub")),
        *extra,
    )  # fmt: skip
    shown = cli.json("show", name)
    assert isinstance(shown, dict)
    return Path(shown["path"])


def root_is_clean(disk: Path, scratch: Path) -> str:
    raw = scratch / "root-after.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(raw)], check=True
    )
    try:
        fsck = subprocess.run(
            ["e2fsck", "-n", "-f", str(raw)], capture_output=True, text=True, check=False
        )
    finally:
        raw.unlink()
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    return fsck.stdout


def live_with_it(cli: Cli, name: str, inst_dir: Path, via: str, began: float) -> None:
    times = TIMINGS.setdefault(via, {})
    times["create"] = time.monotonic() - began
    started = cli.json("start", name, "--via", via)
    assert isinstance(started, dict) and started["via"] == via and started["state"] == "running"
    times["start"] = time.monotonic() - began
    waited = cli.json("wait", name, "--ssh", "--timeout", "420")
    assert isinstance(waited, dict)
    times["create_to_ssh"] = time.monotonic() - began
    times["start_to_ssh"] = times["create_to_ssh"] - times["start"]

    assert cli("ssh", name, "--", "cat", "/etc/hostname").stdout.strip() == name
    swaps = cli("ssh", name, "--", "/sbin/swapon", "--show=NAME,TYPE,SIZE").stdout
    assert "/dev/vd" in swaps and "partition" in swaps and "256M" in swaps, swaps
    record = json.loads((inst_dir / "instance.json").read_text())
    mac = cli("ssh", name, "--", "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert mac == record["macs"][0]  # the MAC network_data.json names is the guest's

    address = cli.json("ip", name)
    assert isinstance(address, dict)
    if via == "qemu":  # user networking: a host port forwarded to the guest's 22
        assert address["host"] == "127.0.0.1" and address["port"] != 22
    else:  # a DHCP lease on libvirt's default network
        assert address["host"].startswith("192.168.122.") and address["port"] == 22

    listed = cli.json("list")
    assert isinstance(listed, list)
    assert next(r for r in listed if r["name"] == name)["state"] == "running"
    refused = cli("delete", name, check=False)
    assert refused.returncode == 1 and "is running" in refused.stderr, refused.stderr
    assert (inst_dir / "disk").exists()

    stop_began = time.monotonic()
    stopped = cli.json("stop", name, "--timeout", "180")
    assert isinstance(stopped, dict)
    times["stop"] = time.monotonic() - stop_began
    assert stopped["graceful"] and not stopped["destroyed"], stopped
    status = cli.json("status", name)
    assert isinstance(status, dict) and status["state"] == "stopped"


def test_qemu(world: Path, image: debian.DebianImage, keypair: Path, tmp_path: Path) -> None:
    cli = Cli(world / "instances")
    began = time.monotonic()
    inst_dir = create(cli, image, "lc-qemu", keypair)  # no --ssh-user: learnt from the image
    live_with_it(cli, "lc-qemu", inst_dir, "qemu", began)
    assert not (inst_dir / "qemu.pid").exists()
    root_is_clean(inst_dir / "disk", tmp_path)
    cli("delete", "lc-qemu")
    print(f"\ntimings qemu: {_fmt(TIMINGS['qemu'])}")


def test_libvirt(world: Path, image: debian.DebianImage, keypair: Path, tmp_path: Path) -> None:
    cli = Cli(world / "instances")
    with libvirt_daemons():
        began = time.monotonic()
        inst_dir = create(cli, image, "lc-libvirt", keypair, "--ssh-user", "debian")
        try:
            live_with_it(cli, "lc-libvirt", inst_dir, "libvirt", began)
            assert "lc-libvirt" in virsh("list", "--all", "--name")  # defined persistently
            root_is_clean(inst_dir / "disk", tmp_path)
            cli("delete", "lc-libvirt")
            assert "lc-libvirt" not in virsh("list", "--all", "--name")  # undefined with it
        finally:
            cli("delete", "lc-libvirt", "--force", check=False)
    print(f"\ntimings libvirt: {_fmt(TIMINGS['libvirt'])}")


def _fmt(times: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}s" for k, v in times.items())
