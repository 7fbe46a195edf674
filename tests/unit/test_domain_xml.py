"""Golden-file tests of the domain XML; REGENERATE_GOLDEN=1 rewrites tests/data/golden."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.domains import DIR, cases
from vmdisk.boot import qemu_argv
from vmdisk.libvirt.domain import render

GOLDEN = Path(__file__).parent.parent / "data" / "golden"


@pytest.mark.parametrize("case", sorted(cases()))
def test_golden(case: str) -> None:
    text = render(cases()[case])
    path = GOLDEN / f"{case}.xml"
    if os.environ.get("REGENERATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_facts_in_the_xml() -> None:
    all_cases = cases()
    full = ET.fromstring(render(all_cases["full"]))
    assert full.get("type") == "kvm"
    assert full.find("cpu").get("mode") == "host-model"  # type: ignore[union-attr]
    targets = [
        (d.find("target").get("dev"), d.find("driver").get("type"))  # type: ignore[union-attr]
        for d in full.iter("disk")
    ]
    assert targets == [("vda", "qcow2"), ("vdb", "qcow2"), ("vdc", "qcow2"), ("hda", "raw")]
    cdrom = next(d for d in full.iter("disk") if d.get("device") == "cdrom")
    assert cdrom.find("readonly") is not None
    assert full.find("devices/serial/log").get("file") == str(DIR / "console.log")  # type: ignore[union-attr]
    tcg = ET.fromstring(render(all_cases["qcow2-root"]))
    assert tcg.get("type") == "qemu" and tcg.find("cpu") is None
    flat = ET.fromstring(render(all_cases["flat"]))
    assert {d.get("cache") for d in flat.iter("driver")} == {"writeback"}
    pre = ET.fromstring(render(all_cases["preallocated"]))
    assert {d.get("io") for d in pre.iter("driver")} == {"native"}
    rescue = ET.fromstring(render(all_cases["rescue"]))
    sources = [d.find("source").get("file") for d in rescue.iter("disk")]  # type: ignore[union-attr]
    assert sources[0] == str(DIR / "disk.rescue") and sources[1] == str(DIR / "disk")
    assert sources[-1] == str(DIR / "disk.config.rescue")
    kernel = ET.fromstring(render(all_cases["kernel"]))
    assert kernel.findtext("os/kernel") == str(DIR / "kernel")
    assert kernel.findtext("os/initrd") == str(DIR / "ramdisk")
    assert kernel.findtext("os/cmdline") == "root=/dev/vda console=ttyS0 quiet"


def test_qemu_command_line_follows_the_same_domain() -> None:
    argv = qemu_argv(cases()["full"])
    assert argv[0] == "qemu-system-x86_64"
    assert "pc,accel=kvm" in argv and "host" in argv
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives[0] == f"file={DIR}/disk,format=qcow2,cache=none,if=virtio"
    assert drives[-1].endswith("if=ide,media=cdrom,readonly=on")
    assert f"file,id=console0,path={DIR}/console.log,append=on" in argv
    assert "bridge,id=net0,br=br0" in argv
    tcg = qemu_argv(cases()["kernel"])
    assert "pc,accel=tcg" in tcg and "-cpu" not in tcg
    assert tcg[tcg.index("-kernel") + 1] == f"{DIR}/kernel"
    assert tcg[tcg.index("-append") + 1] == "root=/dev/vda console=ttyS0 quiet"


@pytest.mark.parametrize(
    ("raw", "hosts"),
    [
        ("[v1:127.0.0.1:4567]", (("127.0.0.1", 4567),)),
        (
            "v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0 10.0.0.2",
            (("10.0.0.1", 6789), ("10.0.0.2", 6789)),
        ),
        (
            "[v2:192.0.2.1:3300,v1:192.0.2.1:6789],[v2:192.0.2.2:3300]",
            (("192.0.2.1", 6789), ("192.0.2.2", 3300)),
        ),
        ("mon1.example.com", (("mon1.example.com", 6789),)),
    ],
)
def test_monitor_addresses(raw: str, hosts: tuple[tuple[str, int], ...]) -> None:
    from vmdisk.tools.ceph import parse_mon_host

    assert parse_mon_host(raw) == hosts


def test_rbd_disks_render_as_network_sources_with_cephx() -> None:
    from tests.domains import DIR, record
    from vmdisk.libvirt.domain import HostFacts, domain_for
    from vmdisk.model import BackendName, DiskRole, NetworkAuth, NetworkSource
    from vmdisk.record import DiskEntry

    hosts = (("192.0.2.1", 6789),)
    auth = NetworkAuth("nova", "5b1f1b8a-3f0c-4a1a-9d7c-8c6f7b6a5e4d")
    rec = record(
        backend=BackendName.RBD,
        disks=(
            DiskEntry(
                "disk", DiskRole.ROOT, "raw", NetworkSource("rbd", "vms/u_disk", hosts, auth)
            ),
            DiskEntry(
                "disk.config",
                DiskRole.CONFIG,
                "raw",
                NetworkSource("rbd", "vms/u_disk.config", hosts, auth),
            ),
        ),
    )
    root = ET.fromstring(render(domain_for(rec, DIR, HostFacts("qemu"))))
    disks = list(root.iter("disk"))
    assert [d.get("type") for d in disks] == ["network", "network"]
    source = disks[0].find("source")
    assert source is not None and source.get("protocol") == "rbd"
    assert source.get("name") == "vms/u_disk"
    assert source.find("host").get("port") == "6789"  # type: ignore[union-attr]
    auth = disks[0].find("auth")
    assert auth is not None and auth.get("username") == "nova"
    assert auth.find("secret").get("type") == "ceph"  # type: ignore[union-attr]
    assert disks[1].get("device") == "cdrom"
