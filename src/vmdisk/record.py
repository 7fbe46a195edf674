"""The instance record (`<uuid>/instance.json`) as frozen dataclasses, and its JSON forms.

Version 2 carries every disk with its role, format, size, base, label, file system and
source; disk.info, `show`, the domain, cache usage and resize are all derived from it.
Version 1 records (vmdisk before the typed record) are read and upgraded in memory.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmdisk.credentials import strip_credentials
from vmdisk.errors import BackendError
from vmdisk.model import (
    BackendName,
    BlockSource,
    DiskRole,
    DiskSource,
    FileSource,
    NetworkAuth,
    NetworkSource,
    OsType,
)
from vmdisk.settings import Flavor

VERSION = 2


@dataclass(frozen=True, slots=True)
class DiskEntry:
    """One disk of an instance as it was made."""

    name: str
    role: DiskRole
    format: str  # the driver format, pinned: every later qemu-img call passes it as -f
    source: DiskSource
    size: int | None = None  # bytes the plan asked for; None: the image's own size
    base: str | None = None  # the _base entry it was made from
    label: str | None = None
    fs: str | None = None


@dataclass(frozen=True, slots=True)
class BootFile:
    """A kernel or ramdisk booted the AMI way: its image id and its _base entry."""

    image_id: str
    base: str | None = None


@dataclass(frozen=True, slots=True)
class DriveInfo:
    seed: str  # "config-2" or "nocloud"
    format: str  # "iso9660" or "vfat"


@dataclass(frozen=True, slots=True)
class RescueState:
    """An instance in rescue mode: the rescue image and the extra disks made for it."""

    image_id: str
    base: str
    format: str
    disks: tuple[DiskEntry, ...] = ()
    bases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    name: str
    uuid: str
    backend: BackendName
    flavor: Flavor
    image_id: str
    image_base: str
    os_type: OsType
    disks: tuple[DiskEntry, ...]
    created_at: str
    config_drive: DriveInfo | None = None
    rescue: RescueState | None = None
    kernel: BootFile | None = None
    ramdisk: BootFile | None = None
    cmdline: str | None = None
    image_source: str = ""
    host: str = ""
    preallocate: bool = False
    macs: tuple[str, ...] = ()  # the guest's NIC MACs as network_data.json names them
    version: int = VERSION

    def disk(self, name: str) -> DiskEntry | None:
        return next((d for d in self.all_disks() if d.name == name), None)

    def all_disks(self) -> Iterator[DiskEntry]:
        """The instance's own disks, then those of its rescue, if it is rescued."""
        yield from self.disks
        if self.rescue is not None:
            yield from self.rescue.disks

    def bases(self) -> set[str]:
        """Every _base entry this instance's disks were made from (for the cache cleaner)."""
        names = {self.image_base}
        names.update(d.base for d in self.all_disks() if d.base)
        for boot in (self.kernel, self.ramdisk):
            if boot is not None and boot.base:
                names.add(boot.base)
        if self.rescue is not None:
            names.add(self.rescue.base)
            names.update(self.rescue.bases)
        return names

    def __post_init__(self) -> None:
        # The source as typed may hold user:password or a token; the record never does,
        # whoever builds it (the provisioner, an upgrade of an old record, the Python API).
        object.__setattr__(self, "image_source", strip_credentials(self.image_source))

    def to_json(self) -> bytes:
        return json.dumps(encode(self), indent=2, sort_keys=True).encode() + b"\n"


def encode(record: InstanceRecord) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    data["disks"] = [_encode_disk(d) for d in record.disks]
    if record.rescue is not None:
        data["rescue"]["disks"] = [_encode_disk(d) for d in record.rescue.disks]
    return data


def _encode_disk(disk: DiskEntry) -> dict[str, Any]:
    data = dataclasses.asdict(disk)
    data["source"] = _encode_source(disk.source)
    return data


def _encode_source(source: DiskSource) -> dict[str, Any]:
    if isinstance(source, FileSource):
        return {"type": "file", "path": str(source.path)}
    if isinstance(source, BlockSource):
        return {"type": "block", "device": str(source.device)}
    auth = source.auth
    return {
        "type": "network",
        "protocol": source.protocol,
        "name": source.name,
        "hosts": [list(h) for h in source.hosts],
        "auth": dataclasses.asdict(auth) if auth else None,
        "conf": str(source.conf) if source.conf else None,
    }


def decode(data: Any, directory: Path, formats: Mapping[str, str] | None = None) -> InstanceRecord:
    """A record from its JSON; `formats` (disk.info) is needed only to upgrade version 1."""
    if not isinstance(data, dict):
        raise BackendError(f"{directory}/instance.json is not a JSON object")
    try:
        if data.get("version", 1) == 1:
            return _decode_v1(data, directory, formats or {})
        return _decode_v2(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise BackendError(
            f"{directory}/instance.json is not a valid instance record: {exc!r}",
            hint="the instance directory was edited by hand or is damaged",
        ) from exc


def _decode_v2(data: dict[str, Any]) -> InstanceRecord:
    rescue = data.get("rescue")
    return InstanceRecord(
        name=data["name"],
        uuid=data["uuid"],
        backend=BackendName(data["backend"]),
        flavor=_flavor(data["flavor"]),
        image_id=data["image_id"],
        image_base=data["image_base"],
        os_type=OsType(data["os_type"]),
        disks=tuple(_decode_disk(d) for d in data["disks"]),
        created_at=data["created_at"],
        config_drive=DriveInfo(**data["config_drive"]) if data.get("config_drive") else None,
        rescue=(
            RescueState(
                image_id=rescue["image_id"],
                base=rescue["base"],
                format=rescue["format"],
                disks=tuple(_decode_disk(d) for d in rescue.get("disks", ())),
                bases=tuple(rescue.get("bases", ())),
            )
            if rescue
            else None
        ),
        kernel=BootFile(**data["kernel"]) if data.get("kernel") else None,
        ramdisk=BootFile(**data["ramdisk"]) if data.get("ramdisk") else None,
        cmdline=data.get("cmdline"),
        image_source=data.get("image_source", ""),
        host=data.get("host", ""),
        preallocate=bool(data.get("preallocate", False)),
        macs=tuple(str(m) for m in data.get("macs", ())),
    )


def _decode_disk(data: dict[str, Any]) -> DiskEntry:
    return DiskEntry(
        name=data["name"],
        role=DiskRole(data["role"]),
        format=data["format"],
        source=_decode_source(data["source"]),
        size=data.get("size"),
        base=data.get("base"),
        label=data.get("label"),
        fs=data.get("fs"),
    )


def _decode_source(data: dict[str, Any]) -> DiskSource:
    kind = data["type"]
    if kind == "file":
        return FileSource(Path(data["path"]))
    if kind == "block":
        return BlockSource(Path(data["device"]))
    if kind == "network":
        auth = data.get("auth")
        return NetworkSource(
            protocol=data["protocol"],
            name=data["name"],
            hosts=tuple((str(h), int(p)) for h, p in data.get("hosts", ())),
            auth=NetworkAuth(**auth) if auth else None,
            conf=Path(data["conf"]) if data.get("conf") else None,
        )
    raise ValueError(f"unknown disk source type {kind!r}")


def _flavor(data: dict[str, Any]) -> Flavor:
    return Flavor(
        name=str(data["name"]),
        vcpus=int(data["vcpus"]),
        memory_mb=int(data["memory_mb"]),
        root_gb=int(data["root_gb"]),
        ephemeral_gb=int(data.get("ephemeral_gb", 0)),
        swap_mb=int(data.get("swap_mb", 0)),
    )


_V1_ROLES = {
    "disk.rescue": DiskRole.RESCUE,
    "disk.config.rescue": DiskRole.CONFIG,
    "kernel.rescue": DiskRole.KERNEL,
    "ramdisk.rescue": DiskRole.RAMDISK,
}


def _decode_v1(data: dict[str, Any], directory: Path, formats: Mapping[str, str]) -> InstanceRecord:
    return _decode_v2(_upgrade_v1(data, directory, formats))


def _upgrade_v1(
    data: dict[str, Any], directory: Path, formats: Mapping[str, str]
) -> dict[str, Any]:
    """A version-1 record in version 2's shape. Version 1 kept disks as dicts (RBD ones with
    "rbd": "pool/image") and rescue disks only in disk.info; monitors were not recorded, so
    v1 RBD sources carry no hosts."""
    out = {
        **data,
        "os_type": data.get("os_type", "linux"),
        "created_at": data.get("created_at", ""),
    }
    out["disks"] = [_v1_disk(d, directory) for d in data["disks"]]
    out["preallocate"] = bool(data.get("extra", {}).get("preallocate", False))
    for key in ("kernel", "ramdisk"):
        boot = data.get(key)
        out[key] = {"image_id": boot["id"], "base": boot.get("base")} if boot else None
    rescue = data.get("rescue")
    if rescue:
        out["rescue"] = {
            "image_id": rescue.get("image_id", ""),
            "base": rescue.get("base", ""),
            "format": rescue.get("format", "raw"),
            "bases": rescue.get("bases", []),
            "disks": [
                _encode_disk(
                    DiskEntry(
                        name, role, formats[str(directory / name)], FileSource(directory / name)
                    )
                )
                for name, role in _V1_ROLES.items()
                if str(directory / name) in formats
            ],
        }
    return out


def _v1_disk(data: dict[str, Any], directory: Path) -> dict[str, Any]:
    rbd = data.get("rbd")
    source: DiskSource = NetworkSource("rbd", rbd) if rbd else FileSource(directory / data["name"])
    return {
        **data,
        "role": data.get("role", "root"),
        "format": "raw" if rbd else data.get("format", "raw"),
        "source": _encode_source(source),
    }
