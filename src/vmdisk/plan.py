"""plan_disks(): names, sizes, formats and cache entries of an instance's disks. Pure.

Everything `vmdisk create --dry-run` prints comes from here, and unit tests assert on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from vmdisk.backends import backend_info
from vmdisk.configdrive.metadata import network_data_from_nics, nocloud_network_config
from vmdisk.errors import InvalidRequest, NotSupported
from vmdisk.imagecache.records import cache_name
from vmdisk.macaddr import check_mac, default_mac, macs_in
from vmdisk.model import (
    BackendName,
    ConfigDriveSpec,
    DiskPlan,
    DiskRole,
    InstancePlan,
    InstanceSpec,
    OsType,
)
from vmdisk.settings import Settings
from vmdisk.units import GiB, MiB

#: Nova's default ephemeral file system by os_type (privsep/fs.py).
DEFAULT_FS = {OsType.LINUX: "ext4", OsType.WINDOWS: "ntfs"}
FALLBACK_FS = "vfat"


def choose_backend(requested: BackendName | None, settings: Settings) -> BackendName:
    """`--backend`, else `[libvirt] images_type`, where "default" means qcow2 iff use_cow_images."""
    if requested is not None:
        return requested
    kind = settings.libvirt.images_type
    if kind == "default":
        return BackendName.QCOW2 if settings.use_cow_images else BackendName.FLAT
    return BackendName.FLAT if kind in ("raw", "flat") else BackendName(kind)


def ephemeral_fs(os_type: OsType, settings: Settings) -> tuple[str, str | None]:
    """(file system, custom mkfs command or None) as Nova picks them."""
    commands = settings.mkfs_commands()
    command = commands.get(str(os_type)) or commands.get("default")
    fs = settings.default_ephemeral_format or DEFAULT_FS.get(os_type, FALLBACK_FS)
    return fs, command


def ephemeral_base_name(
    size_gb: int, fs: str, command: str | None, label: str = "ephemeral0"
) -> str:
    """`ephemeral_<GB>_<md5(command or fs)[:7]>`: the hash, not os_type, names it (bug 1253980).

    The label is baked into the template, so a second ephemeral (label ephemeral1) hashes the
    label in too; Nova's name collides there and hands disk.eph1 the label ephemeral0.
    """
    key = command or fs
    if label != "ephemeral0":
        key = f"{key}:{label}"
    digest = hashlib.md5(key.encode(), usedforsecurity=False).hexdigest()[:7]
    return f"ephemeral_{size_gb}_{digest}"


def swap_base_name(size_mb: int) -> str:
    return f"swap_{size_mb}"


def plan_disks(
    spec: InstanceSpec,
    settings: Settings,
    image_id: str,
    boot_ids: dict[str, str] | None = None,
    image_location: str | None = None,
) -> InstancePlan:
    """`boot_ids` maps "kernel"/"ramdisk" to image ids, for images booted the AMI way;
    `image_location` is where the image service keeps it (a backend may clone from there)."""
    _check_sizes(spec)
    backend = choose_backend(spec.backend, settings)
    instance_dir = settings.instances_path / spec.uuid
    boot_ids = dict(boot_ids or {})
    drive, macs = _nic_default(_config_drive(spec, settings), spec.uuid)
    disks = [
        _root(spec, instance_dir, backend, cache_name(image_id)),
        *_blank_disks(spec, settings, instance_dir, backend),
        *_boot_disks(instance_dir, boot_ids, spec.uuid),
        *_drive_disk(instance_dir, drive, spec.uuid),
    ]
    return InstancePlan(
        name=spec.name,
        uuid=spec.uuid,
        instance_dir=instance_dir,
        base_dir=settings.base_dir,
        backend=backend,
        flavor=spec.flavor,
        image_id=image_id,
        image_base=cache_name(image_id),
        os_type=spec.os_type,
        disks=tuple(disks),
        preallocate=settings.preallocate_images == "space",
        config_drive=drive,
        boot_ids=boot_ids,
        cmdline=spec.cmdline,
        injection=_injection(spec, backend),
        image_location=image_location,
        macs=macs,
    )


def _nic_default(
    drive: ConfigDriveSpec | None, uuid: str
) -> tuple[ConfigDriveSpec | None, tuple[str, ...]]:
    """Every instance has a NIC: the MACs its network data names (`--nic mac=`), else one
    default MAC (from the uuid) that the drive's network data configures by DHCP. The MACs
    go into the record, so qemu and libvirt give the guest exactly these."""
    given = macs_in(drive.network_data) if drive is not None else []
    try:
        macs = tuple(check_mac(m) for m in given)
    except ValueError as exc:
        raise InvalidRequest(str(exc), reason="bad-option") from exc
    if macs:
        return drive, macs
    mac = default_mac(uuid)
    if drive is None or drive.network_data is not None:
        return drive, (mac,)
    nic = {"mac": mac, "ip": "dhcp"}
    data = (
        nocloud_network_config([nic]) if drive.seed == "nocloud" else network_data_from_nics([nic])
    )
    return dataclasses.replace(drive, network_data=data), (mac,)


def _root(
    spec: InstanceSpec, instance_dir: Path, backend: BackendName, image_base: str
) -> DiskPlan:
    fmt = backend_info(backend).disk_format
    size = spec.flavor.root_gb * GiB or None  # root_gb 0: the image's own size
    return DiskPlan(
        "disk", DiskRole.ROOT, instance_dir / "disk", fmt, size, base=image_base, owner=spec.uuid
    )


def _blank_disks(
    spec: InstanceSpec, settings: Settings, instance_dir: Path, backend: BackendName
) -> list[DiskPlan]:
    """disk.local (or disk.eph0..N, which replace it, as Nova's BDM ephemerals do), disk.swap."""
    info = backend_info(backend)
    cow, fmt = info.shares_templates, info.disk_format
    flavor = spec.flavor
    fs, command = ephemeral_fs(spec.os_type, settings)
    ephemerals = [(f"disk.eph{i}", gb) for i, gb in enumerate(spec.ephemerals)]
    if not ephemerals and flavor.ephemeral_gb:
        ephemerals = [("disk.local", flavor.ephemeral_gb)]
    disks = []
    for index, (name, gb) in enumerate(ephemerals):
        label = f"ephemeral{index}"
        base = ephemeral_base_name(gb, fs, command, label) if cow else None
        disks.append(
            DiskPlan(
                name,
                DiskRole.EPHEMERAL,
                instance_dir / name,
                fmt,
                gb * GiB,
                base=base,
                fs=fs,
                label=label,
                mkfs_command=command,
                owner=spec.uuid,
            )
        )
    if flavor.swap_mb:
        base = swap_base_name(flavor.swap_mb) if cow else None
        disks.append(
            DiskPlan(
                "disk.swap",
                DiskRole.SWAP,
                instance_dir / "disk.swap",
                fmt,
                flavor.swap_mb * MiB,
                base=base,
                owner=spec.uuid,
            )
        )
    return disks


def _boot_disks(instance_dir: Path, boot_ids: dict[str, str], owner: str) -> list[DiskPlan]:
    if "ramdisk" in boot_ids and "kernel" not in boot_ids:
        raise InvalidRequest("a ramdisk needs a kernel", reason="bad-option")
    return [
        DiskPlan(
            str(role),
            role,
            instance_dir / str(role),
            "raw",
            None,
            base=cache_name(boot_ids[str(role)]),
            owner=owner,
        )
        for role in (DiskRole.KERNEL, DiskRole.RAMDISK)
        if str(role) in boot_ids
    ]


def _drive_disk(instance_dir: Path, drive: ConfigDriveSpec | None, owner: str) -> list[DiskPlan]:
    if drive is None:
        return []
    label = "cidata" if drive.seed == "nocloud" else "config-2"
    return [
        DiskPlan(
            "disk.config",
            DiskRole.CONFIG,
            instance_dir / "disk.config",
            "raw",
            None,
            label=label,
            owner=owner,
        )
    ]


def plan_rescue(
    instance_dir: Path, backend: BackendName, image_id: str, owner: str = ""
) -> DiskPlan:
    """disk.rescue: an overlay (or copy) of the rescue image at the image's own size."""
    return DiskPlan(
        "disk.rescue",
        DiskRole.RESCUE,
        instance_dir / "disk.rescue",
        backend_info(backend).disk_format,
        None,
        base=cache_name(image_id),
        owner=owner or instance_dir.name,
    )


def _injection(spec: InstanceSpec, backend: BackendName) -> object:
    if spec.injection is None:
        return None
    if not backend_info(backend).file_root:
        raise NotSupported(
            f"file injection needs a local root disk, not {backend}",
            reason="not-supported",
            hint="use --config-drive",
        )
    if spec.config_drive is not None:
        raise InvalidRequest(
            "with a config drive, injected data goes into the drive", reason="bad-option"
        )
    return spec.injection


def _config_drive(spec: InstanceSpec, settings: Settings) -> ConfigDriveSpec | None:
    if spec.config_drive is not None:
        return spec.config_drive
    if settings.force_config_drive:
        return ConfigDriveSpec(format=settings.config_drive_format)
    return None


def _check_sizes(spec: InstanceSpec) -> None:
    flavor = spec.flavor
    for what, value in (("vcpus", flavor.vcpus), ("memory_mb", flavor.memory_mb)):
        if value < 1:
            raise InvalidRequest(f"{what} must be at least 1, got {value}", reason="bad-size")
    for what, value in (
        ("root_gb", flavor.root_gb),
        ("ephemeral_gb", flavor.ephemeral_gb),
        ("swap_mb", flavor.swap_mb),
        *(("ephemeral", g) for g in spec.ephemerals),
    ):
        if value < 0:
            raise InvalidRequest(f"{what} cannot be negative, got {value}", reason="bad-size")
        if value > 1024 * 1024:  # 1 PiB in GiB (or 1 TiB of swap in MiB): beyond any host
            raise InvalidRequest(f"{what} {value} is absurdly large", reason="bad-size")
    if any(g == 0 for g in spec.ephemerals):
        raise InvalidRequest(
            "an extra ephemeral disk needs a size of at least 1 GiB", reason="bad-size"
        )
