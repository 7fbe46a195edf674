"""The domain model of an instance and its libvirt XML: dataclasses rendered with ElementTree.

Backends never write XML; this module turns an instance's disks (from disk.info, formats pinned)
into a Domain, and a Domain into XML, one line per XML fact. The qemu command line in boot.py
is derived from the same Domain.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmdisk import diskinfo
from vmdisk.instances import Instance, InstanceRecord
from vmdisk.netspec import Interface

METADATA_NS = "https://github.com/vmdisk/vmdisk/xmlns/instance/1.0"
DISK_LETTERS = "abcdefghijklmnopqrstuvwxyz"
DEFAULT_CMDLINE = "root=/dev/vda console=ttyS0"


@dataclass(frozen=True, slots=True)
class NetworkSource:
    """An RBD (or other network) disk: `pool/image` on the monitors."""

    protocol: str
    name: str
    hosts: tuple[tuple[str, int], ...] = ()
    auth_user: str | None = None
    secret_uuid: str | None = None


@dataclass(frozen=True, slots=True)
class DiskDevice:
    source: Path | NetworkSource
    target: str
    driver_type: str
    bus: str = "virtio"
    device: str = "disk"
    cache: str = "none"
    io: str | None = None
    readonly: bool = False


@dataclass(frozen=True, slots=True)
class Domain:
    virt_type: str  # "kvm" or "qemu" (TCG)
    name: str
    uuid: str
    memory_mb: int
    vcpus: int
    machine: str
    disks: tuple[DiskDevice, ...]
    console_log: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    interface: Interface | None = None
    flavor: str = ""
    image_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    ceph_conf: Path | None = None  # for qemu's own rbd: driver (libvirt takes <host>s)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


def render(domain: Domain) -> str:
    root = ET.Element("domain", {"type": domain.virt_type})
    _sub(root, "name", domain.name)
    _sub(root, "uuid", domain.uuid)
    _metadata(root, domain)
    _sub(root, "memory", str(domain.memory_mb * 1024), unit="KiB")
    _sub(root, "currentMemory", str(domain.memory_mb * 1024), unit="KiB")
    _sub(root, "vcpu", str(domain.vcpus))
    _os(root, domain)
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if domain.virt_type == "kvm":
        _sub(root, "cpu", mode="host-model")
    _sub(root, "clock", offset="utc")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    _devices(root, domain)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def _metadata(root: ET.Element, domain: Domain) -> None:
    ET.register_namespace("vmdisk", METADATA_NS)
    meta = _sub(root, "metadata")
    inst = ET.SubElement(meta, f"{{{METADATA_NS}}}instance")
    ET.SubElement(inst, f"{{{METADATA_NS}}}flavor", {"name": domain.flavor})
    ET.SubElement(inst, f"{{{METADATA_NS}}}image", {"id": domain.image_id})
    for key, value in sorted(domain.metadata.items()):
        ET.SubElement(inst, f"{{{METADATA_NS}}}{key}").text = value


def _os(root: ET.Element, domain: Domain) -> None:
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine=domain.machine)
    if domain.kernel is not None:
        _sub(os_el, "kernel", str(domain.kernel))
        if domain.initrd is not None:
            _sub(os_el, "initrd", str(domain.initrd))
        _sub(os_el, "cmdline", domain.cmdline or DEFAULT_CMDLINE)
    else:
        _sub(os_el, "boot", dev="hd")


def _devices(root: ET.Element, domain: Domain) -> None:
    devices = _sub(root, "devices")
    for disk in domain.disks:
        _disk(devices, disk)
    serial = _sub(devices, "serial", type_="file")
    _sub(serial, "source", path=str(domain.console_log), append="on")
    _sub(serial, "target", port="0")
    pty = _sub(devices, "serial", type_="pty")
    _sub(pty, "target", port="1")
    console = _sub(devices, "console", type_="pty")
    _sub(console, "target", type_="virtio", port="0")
    if domain.interface is not None:
        _interface(devices, domain.interface)
    _sub(devices, "memballoon", model="virtio")


def _disk(devices: ET.Element, disk: DiskDevice) -> None:
    kind = "network" if isinstance(disk.source, NetworkSource) else "file"
    el = _sub(devices, "disk", type_=kind, device=disk.device)
    driver = {"name": "qemu", "type": disk.driver_type, "cache": disk.cache}
    if disk.io:
        driver["io"] = disk.io
    _sub(el, "driver", **driver)
    if isinstance(disk.source, NetworkSource):
        _network_source(el, disk.source)
    else:
        _sub(el, "source", file=str(disk.source))
    _sub(el, "target", dev=disk.target, bus=disk.bus)
    if disk.readonly:
        _sub(el, "readonly")


def _network_source(el: ET.Element, src: NetworkSource) -> None:
    if src.auth_user:
        auth = _sub(el, "auth", username=src.auth_user)
        _sub(auth, "secret", type_="ceph", uuid=src.secret_uuid or "")
    source = _sub(el, "source", protocol=src.protocol, name=src.name)
    for host, port in src.hosts:
        _sub(source, "host", name=host, port=str(port))


def _interface(devices: ET.Element, iface: Interface) -> None:
    if iface.kind == "bridge":
        el = _sub(devices, "interface", type_="bridge")
        _sub(el, "source", bridge=iface.bridge or "")
    else:
        el = _sub(devices, "interface", type_="user")
    _sub(el, "model", type_=iface.model)


@dataclass(frozen=True, slots=True)
class CephFacts:
    """Where RBD disks are: monitors from ceph.conf, and cephx user and libvirt secret."""

    hosts: tuple[tuple[str, int], ...] = ()
    user: str | None = None
    secret_uuid: str | None = None
    conf: Path | None = None


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the XML needs from the host and settings, decided once at the edge."""

    virt_type: str
    machine: str = "pc"
    direct_io: bool = True
    interface: Interface | None = None
    ceph: CephFacts = CephFacts()


def domain_for(
    rec: InstanceRecord,
    directory: Path,
    formats: dict[str, str],
    host: HostFacts,
    *,
    rescue: bool = False,
    kernel: Path | None = None,
    initrd: Path | None = None,
    cmdline: str | None = None,
) -> Domain:
    """The Domain of an instance; `formats` is its disk.info, which pins every disk's format."""
    preallocated = bool(rec.extra.get("preallocate"))
    cache = "none" if host.direct_io else "writeback"
    io = "native" if preallocated and cache == "none" else None
    sources = _sources(rec, directory, formats, host.ceph)
    disks: list[DiskDevice] = []
    for index, name in enumerate(_boot_order(sources, rescue)):
        source, fmt = sources[name]
        disks.append(DiskDevice(source, f"vd{DISK_LETTERS[index]}", fmt, cache=cache, io=io))
    drive = "disk.config.rescue" if rescue else "disk.config"
    if drive in sources:
        disks.append(
            DiskDevice(
                sources[drive][0],
                "hda",
                "raw",
                bus="ide",
                device="cdrom",
                cache=cache,
                readonly=True,
            )
        )
    if kernel is None:
        kernel, initrd = _boot_files(directory, formats, rescue)
    return Domain(
        virt_type=host.virt_type,
        name=rec.name,
        uuid=rec.uuid,
        memory_mb=int(rec.flavor["memory_mb"]),
        vcpus=int(rec.flavor["vcpus"]),
        machine=host.machine,
        disks=tuple(disks),
        console_log=directory / "console.log",
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline or rec.cmdline,
        interface=host.interface,
        flavor=str(rec.flavor.get("name", "")),
        image_id=rec.image_id,
        ceph_conf=host.ceph.conf,
    )


def instance_domain(inst: Instance, host: HostFacts, **kw: Any) -> Domain:
    return domain_for(inst.record, inst.path, diskinfo.read(inst.path), host, **kw)


_NOT_DISKS = frozenset(
    {"disk.config", "disk.config.rescue", "kernel", "ramdisk", "kernel.rescue", "ramdisk.rescue"}
)


def _sources(
    rec: InstanceRecord, directory: Path, formats: dict[str, str], ceph: CephFacts
) -> dict[str, tuple[Path | NetworkSource, str]]:
    """Every disk by name: local files from disk.info, RBD images from the record."""
    sources: dict[str, tuple[Path | NetworkSource, str]] = {
        Path(p).name: (directory / Path(p).name, fmt) for p, fmt in formats.items()
    }
    for disk in rec.disks:
        if disk.get("rbd"):
            network = NetworkSource(
                "rbd", str(disk["rbd"]), ceph.hosts, ceph.user, ceph.secret_uuid
            )
            sources[str(disk["name"])] = (network, "raw")
    return sources


def _boot_order(formats: dict[str, Any], rescue: bool) -> list[str]:
    """vda is the root (disk.rescue in rescue, then the original disk), then the others."""
    rank = {"disk.rescue": 0, "disk": 1, "disk.local": 2, "disk.swap": 9}
    names = [Path(p).name for p in formats]
    wanted = [n for n in names if n not in _NOT_DISKS and (rescue or n != "disk.rescue")]
    return sorted(wanted, key=lambda n: (rank.get(n, 5), n))


def _boot_files(
    directory: Path, formats: dict[str, str], rescue: bool
) -> tuple[Path | None, Path | None]:
    """kernel/ramdisk from disk.info (kernel.rescue/ramdisk.rescue when rescuing with them)."""
    suffix = ".rescue" if rescue and str(directory / "kernel.rescue") in formats else ""
    kernel, ramdisk = directory / f"kernel{suffix}", directory / f"ramdisk{suffix}"
    if str(kernel) not in formats:
        return None, None
    return kernel, ramdisk if str(ramdisk) in formats else None
