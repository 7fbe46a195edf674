"""Plain data: what an instance is asked to be, and the plan of its disks. No I/O here."""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from vmdisk.errors import InvalidRequest
from vmdisk.settings import Flavor

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", re.ASCII)


class DiskRole(StrEnum):
    ROOT = "root"
    EPHEMERAL = "ephemeral"
    SWAP = "swap"
    CONFIG = "config"
    RESCUE = "rescue"
    KERNEL = "kernel"
    RAMDISK = "ramdisk"


class BackendName(StrEnum):
    QCOW2 = "qcow2"
    FLAT = "flat"
    RBD = "rbd"
    LVM = "lvm"


@dataclass(frozen=True, slots=True)
class FileSource:
    """A disk that is a file (the qcow2 and flat backends, config drives, kernels)."""

    path: Path


@dataclass(frozen=True, slots=True)
class BlockSource:
    """A disk that is a block device (a logical volume)."""

    device: Path


@dataclass(frozen=True, slots=True)
class NetworkAuth:
    username: str
    secret_uuid: str | None = None
    secret_type: str = "ceph"  # noqa: S105 (libvirt's secret kind, not a secret)


@dataclass(frozen=True, slots=True)
class NetworkSource:
    """A disk reached over the network: `name` is e.g. `pool/image` for RBD.

    `conf` is the client configuration qemu's own driver reads (libvirt takes `hosts`).
    """

    protocol: str
    name: str
    hosts: tuple[tuple[str, int], ...] = ()
    auth: NetworkAuth | None = None
    conf: Path | None = None


#: Where a disk lives; its backend decides, the plan never does.
DiskSource = FileSource | BlockSource | NetworkSource


def source_text(source: DiskSource) -> str:
    """How a source is shown to a user: a path, a device, or `protocol:name`."""
    if isinstance(source, FileSource):
        return str(source.path)
    if isinstance(source, BlockSource):
        return str(source.device)
    return f"{source.protocol}:{source.name}"


@dataclass(frozen=True, slots=True)
class ProvisionedDisk:
    """What a backend made: where the disk is and the format the hypervisor reads."""

    source: DiskSource
    driver_format: str


class OsType(StrEnum):
    LINUX = "linux"
    WINDOWS = "windows"
    OTHER = "other"


def validate_name(name: str) -> str:
    """Instance names become log lines and libvirt domain names, never paths; keep them plain."""
    if not NAME_RE.fullmatch(name):
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise InvalidRequest(
            f"invalid instance name {shown!r}: use 1-63 ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            reason="bad-name",
        )
    return name


def validate_uuid(text: str) -> str:
    try:
        value = uuidlib.UUID(text)
    except ValueError as exc:
        raise InvalidRequest(f"invalid uuid {text!r}", reason="bad-uuid") from exc
    if str(value) != text.lower():
        raise InvalidRequest(f"uuid {text!r} must be in canonical form {value}", reason="bad-uuid")
    return str(value)


@dataclass(frozen=True, slots=True)
class ConfigDriveSpec:
    """What goes on the config drive; the builder turns it into files."""

    user_data: bytes | None = None
    ssh_keys: tuple[tuple[str, str], ...] = ()  # (name, public key)
    admin_pass: str | None = None
    files: tuple[tuple[str, bytes], ...] = ()  # (guest path, content)
    meta: tuple[tuple[str, str], ...] = ()
    hostname: str | None = None
    network_data: dict[str, Any] | None = None
    seed: str = "config-2"  # or "nocloud"
    format: str = "iso9660"


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    name: str
    uuid: str
    flavor: Flavor
    ephemerals: tuple[int, ...] = ()  # extra ephemeral disks, GiB each (Nova's BDM ephemerals)
    os_type: OsType = OsType.LINUX
    backend: BackendName | None = None
    config_drive: ConfigDriveSpec | None = None
    cmdline: str | None = None
    injection: Any = None  # vmdisk.inject.Injection: written into the root disk, no drive


@dataclass(frozen=True, slots=True)
class DiskPlan:
    """One disk to make: its name, role, format, size and the _base entry behind it.

    `path` is where the disk would be as a file in the instance directory; a backend that
    keeps disks elsewhere (RBD, LVM) says so in the ProvisionedDisk it returns. `owner` is the
    instance's uuid, which names the disk in such stores.
    """

    name: str
    role: DiskRole
    path: Path
    format: str
    size: int | None  # bytes; None means "the image's own size"
    base: str | None = None  # entry in _base (sha1, ephemeral_*, swap_*), None if made in place
    fs: str | None = None
    label: str | None = None
    mkfs_command: str | None = None
    owner: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": str(self.role),
            "path": str(self.path),
            "format": self.format,
            "size": self.size,
            "base": self.base,
            "fs": self.fs,
            "label": self.label,
        }


@dataclass(frozen=True, slots=True)
class InstancePlan:
    name: str
    uuid: str
    instance_dir: Path
    base_dir: Path
    backend: BackendName
    flavor: Flavor
    image_id: str
    image_base: str
    os_type: OsType
    disks: tuple[DiskPlan, ...]
    preallocate: bool = False
    config_drive: ConfigDriveSpec | None = field(default=None, compare=False)
    boot_ids: dict[str, str] = field(default_factory=dict)  # "kernel"/"ramdisk" -> image id
    cmdline: str | None = None
    injection: Any = field(default=None, compare=False)
    image_location: str | None = None  # e.g. Glance's rbd:// location, for backends that clone
    macs: tuple[str, ...] = ()  # the guest's NIC MACs, as the drive's network data names them

    def disk(self, name: str) -> DiskPlan | None:
        return next((d for d in self.disks if d.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uuid": self.uuid,
            "path": str(self.instance_dir),
            "backend": str(self.backend),
            "flavor": flavor_dict(self.flavor),
            "image_id": self.image_id,
            "image_base": str(self.base_dir / self.image_base),
            "os_type": str(self.os_type),
            "preallocate": self.preallocate,
            "disks": [d.to_dict() for d in self.disks],
            "boot": {**self.boot_ids, "cmdline": self.cmdline} if self.boot_ids else None,
        }


def flavor_dict(flavor: Flavor) -> dict[str, Any]:
    return {
        "name": flavor.name,
        "vcpus": flavor.vcpus,
        "memory_mb": flavor.memory_mb,
        "root_gb": flavor.root_gb,
        "ephemeral_gb": flavor.ephemeral_gb,
        "swap_mb": flavor.swap_mb,
    }


@dataclass(frozen=True, slots=True)
class BootOptions:
    via: str = "qemu"  # or "libvirt"
    timeout: float = 120.0
    wait_for: str | None = None
    keep: bool = False
    rescue: bool | None = None  # None: boot rescue if the instance is rescued
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    uri: str = "qemu:///system"
