"""The guest side of a disk source: domain XML and qemu -drive for block and network disks,
and the libvirt boot loop against a FakeRunner answering for virsh (no process starts)."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.domains import DIR, record
from tests.fakes import FakeRunner, ok
from vmdisk.boot import ConsoleFollower, boot_libvirt, qemu_argv, watch
from vmdisk.libvirt.domain import HostFacts, domain_for, render
from vmdisk.model import BlockSource, DiskRole, NetworkAuth, NetworkSource
from vmdisk.record import DiskEntry

LV = Path("/dev/vg0/c0ffee00_disk")
RBD = NetworkSource(
    "rbd",
    "vms/c0_disk",
    (("192.0.2.1", 6789),),
    NetworkAuth("nova", "s"),
    Path("/etc/ceph/ceph.conf"),
)


def _domain() -> object:
    rec = record(
        disks=(
            DiskEntry("disk", DiskRole.ROOT, "raw", BlockSource(LV)),
            DiskEntry("disk.local", DiskRole.EPHEMERAL, "raw", RBD),
        )
    )
    return domain_for(rec, DIR, HostFacts("qemu"))


def test_block_source_renders_as_a_block_disk() -> None:
    root = ET.fromstring(render(_domain()))  # type: ignore[arg-type]
    first = next(root.iter("disk"))
    assert first.get("type") == "block"
    assert first.find("source").get("dev") == str(LV)  # type: ignore[union-attr]
    driver = first.find("driver")
    assert driver is not None and (driver.get("cache"), driver.get("io")) == ("none", "native")


def test_qemu_drives_for_block_and_network_sources() -> None:
    argv = qemu_argv(_domain())  # type: ignore[arg-type]
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives[0] == f"file={LV},format=raw,cache=none,if=virtio,aio=native"
    assert drives[1].startswith("file=rbd:vms/c0_disk:conf=/etc/ceph/ceph.conf:id=nova,format=raw")


def test_watch_stops_at_the_wait_for_text(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"old boot\n")
    follower = ConsoleFollower(log, None)
    log.write_bytes(b"old boot\nLinux version 6.1\nlogin:")
    stopped: list[bool] = []
    result = watch(
        follower,
        lambda: True,
        lambda: stopped.append(True),
        timeout=5,
        wait_for="login:",
        via="qemu",
    )
    assert result.reason == "wait-for" and stopped == [True]
    assert result.console == "Linux version 6.1\nlogin:"
    assert result.to_dict()["via"] == "qemu"


def test_boot_libvirt_defines_starts_watches_and_undefines(tmp_path: Path) -> None:
    runner = FakeRunner({("virsh", "-c", "test:///x", "domstate"): ok("shut off\n")})
    domain = dataclasses.replace(_domain(), console_log=tmp_path / "console.log")  # type: ignore[type-var]
    result = boot_libvirt(
        runner, domain, uri="test:///x", timeout=5, wait_for=None, keep=False, stream=None
    )
    assert result.reason == "poweroff"
    verbs = [argv[3] for argv, _ in runner.seen]
    assert verbs[:2] == ["define", "start"] and verbs[-2:] == ["destroy", "undefine"]
