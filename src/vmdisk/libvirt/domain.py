"""The domain model of an instance and its libvirt XML: dataclasses rendered with ElementTree.

Backends never write XML, and this module knows no backend: it turns an instance record's disks
(each a DiskSource with its pinned format) into a Domain, and a Domain into XML, one line per XML
fact; `<disk type="file|block|network">` follows from the source. The qemu command line in
boot.py is derived from the same Domain.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmdisk.instances import Instance
from vmdisk.macaddr import check_mac, default_mac
from vmdisk.model import BlockSource, DiskRole, DiskSource, FileSource, NetworkSource
from vmdisk.netspec import Interface, InterfaceKind, check_bridge_name
from vmdisk.record import DiskEntry, InstanceRecord

METADATA_NS = "https://github.com/vmdisk/vmdisk/xmlns/instance/1.0"
DISK_LETTERS = "abcdefghijklmnopqrstuvwxyz"
DEFAULT_CMDLINE = "root=/dev/vda console=ttyS0"
NIC_KINDS = ("user", "bridge", "network")


@dataclass(frozen=True, slots=True)
class NicDevice:
    """The guest's NIC: qemu user networking (with a host port forwarded to the guest's 22),
    a host bridge, or a libvirt network (libvirt's `default` NAT). Checked when made."""

    kind: str  # "user", "bridge" or "network"
    mac: str
    source: str | None = None  # the bridge or network name
    model: str = "virtio"
    ssh_port: int | None = None  # user: 127.0.0.1:ssh_port reaches the guest's port 22

    def __post_init__(self) -> None:
        if self.kind not in NIC_KINDS:
            raise ValueError(f"NIC kind {self.kind!r} is not one of {NIC_KINDS}")
        object.__setattr__(self, "mac", check_mac(self.mac))
        if self.kind != "user":
            check_bridge_name(self.source or "")
        if self.ssh_port is not None and not 0 < self.ssh_port < 65536:
            raise ValueError(f"port {self.ssh_port} is out of range")


@dataclass(frozen=True, slots=True)
class DiskDevice:
    source: DiskSource
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
    nic: NicDevice | None = None
    flavor: str = ""
    image_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


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
    # The guest's ttyS0: a pty `vmdisk console` (virsh console) attaches to, logged by
    # virtlogd into console.log the way Nova keeps it.
    serial = _sub(devices, "serial", type_="pty")
    _sub(serial, "log", file=str(domain.console_log), append="on")
    _sub(serial, "target", port="0")
    pty = _sub(devices, "serial", type_="pty")
    _sub(pty, "target", port="1")
    console = _sub(devices, "console", type_="pty")
    _sub(console, "target", type_="virtio", port="0")
    if domain.nic is not None:
        _interface(devices, domain.nic)
    _sub(devices, "memballoon", model="virtio")


_DISK_TYPES = {FileSource: "file", BlockSource: "block", NetworkSource: "network"}


def _disk(devices: ET.Element, disk: DiskDevice) -> None:
    source = disk.source
    el = _sub(devices, "disk", type_=_DISK_TYPES[type(source)], device=disk.device)
    driver = {"name": "qemu", "type": disk.driver_type, "cache": disk.cache}
    if disk.io:
        driver["io"] = disk.io
    _sub(el, "driver", **driver)
    if isinstance(source, NetworkSource):
        _network_source(el, source)
    elif isinstance(source, BlockSource):
        _sub(el, "source", dev=str(source.device))
    else:
        _sub(el, "source", file=str(source.path))
    _sub(el, "target", dev=disk.target, bus=disk.bus)
    if disk.readonly:
        _sub(el, "readonly")


def _network_source(el: ET.Element, src: NetworkSource) -> None:
    if src.auth is not None:
        auth = _sub(el, "auth", username=src.auth.username)
        _sub(auth, "secret", type_=src.auth.secret_type, uuid=src.auth.secret_uuid or "")
    source = _sub(el, "source", protocol=src.protocol, name=src.name)
    for host, port in src.hosts:
        _sub(source, "host", name=host, port=str(port))


def _interface(devices: ET.Element, nic: NicDevice) -> None:
    el = _sub(devices, "interface", type_=nic.kind)
    _sub(el, "mac", address=nic.mac)
    if nic.kind == "bridge":
        _sub(el, "source", bridge=nic.source or "")
    elif nic.kind == "network":
        _sub(el, "source", network=nic.source or "")
    _sub(el, "model", type_=nic.model)


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the XML needs from the host and settings, decided once at the edge."""

    virt_type: str
    machine: str = "pc"
    direct_io: bool = True
    interface: Interface | None = None


def domain_for(
    rec: InstanceRecord,
    directory: Path,
    host: HostFacts,
    *,
    rescue: bool = False,
    kernel: Path | None = None,
    initrd: Path | None = None,
    cmdline: str | None = None,
) -> Domain:
    """The Domain of an instance from its record (which pins every disk's format)."""
    cache = "none" if host.direct_io else "writeback"
    disks_by_name = {d.name: d for d in rec.all_disks()}
    disks: list[DiskDevice] = []
    for index, entry in enumerate(_boot_order(disks_by_name, rescue)):
        # Native AIO wants O_DIRECT and blocks that are really there: preallocated files
        # and block devices.
        native = rec.preallocate or isinstance(entry.source, BlockSource)
        io = "native" if native and cache == "none" else None
        target = f"vd{DISK_LETTERS[index]}"
        disks.append(DiskDevice(entry.source, target, entry.format, cache=cache, io=io))
    drive = disks_by_name.get("disk.config.rescue" if rescue else "disk.config")
    if drive is not None:
        disks.append(
            DiskDevice(
                drive.source, "hda", "raw", bus="ide", device="cdrom", cache=cache, readonly=True
            )
        )
    if kernel is None:
        kernel, initrd = _boot_files(disks_by_name, rescue)
    return Domain(
        virt_type=host.virt_type,
        name=rec.name,
        uuid=rec.uuid,
        memory_mb=rec.flavor.memory_mb,
        vcpus=rec.flavor.vcpus,
        machine=host.machine,
        disks=tuple(disks),
        console_log=directory / "console.log",
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline or rec.cmdline,
        nic=_nic(rec, host.interface),
        flavor=rec.flavor.name,
        image_id=rec.image_id,
    )


def instance_mac(rec: InstanceRecord) -> str:
    """The MAC the guest sees: the first `--nic mac=` given at create, else the default."""
    return rec.macs[0] if rec.macs else default_mac(rec.uuid)


def _nic(rec: InstanceRecord, interface: Interface | None) -> NicDevice | None:
    """The NIC `[libvirt] network` asks for, with the instance's MAC."""
    if interface is None:
        return None
    if interface.kind is InterfaceKind.BRIDGE:
        return NicDevice("bridge", instance_mac(rec), interface.bridge, interface.model)
    return NicDevice("user", instance_mac(rec), model=interface.model)


def instance_domain(inst: Instance, host: HostFacts, **kw: Any) -> Domain:
    return domain_for(inst.record, inst.path, host, **kw)


def _boot_order(disks: dict[str, DiskEntry], rescue: bool) -> list[DiskEntry]:
    """vda is the root (disk.rescue in rescue, then the original disk), then the others."""
    rank = {"disk.rescue": 0, "disk": 1, "disk.local": 2, "disk.swap": 9}
    wanted = [
        d
        for d in disks.values()
        if d.role not in _NOT_DISKS and (rescue or d.role is not DiskRole.RESCUE)
    ]
    return sorted(wanted, key=lambda d: (rank.get(d.name, 5), d.name))


_NOT_DISKS = frozenset({DiskRole.CONFIG, DiskRole.KERNEL, DiskRole.RAMDISK})


def _boot_files(disks: dict[str, DiskEntry], rescue: bool) -> tuple[Path | None, Path | None]:
    """kernel/ramdisk from the record (kernel.rescue/ramdisk.rescue when rescuing with them)."""
    suffix = ".rescue" if rescue and "kernel.rescue" in disks else ""
    kernel, ramdisk = disks.get(f"kernel{suffix}"), disks.get(f"ramdisk{suffix}")
    if kernel is None:
        return None, None
    return _path(kernel), _path(ramdisk) if ramdisk is not None else None


def _path(entry: DiskEntry) -> Path:
    if not isinstance(entry.source, FileSource):
        raise ValueError(f"{entry.name} must be a file to be booted with -kernel/-initrd")
    return entry.source.path
