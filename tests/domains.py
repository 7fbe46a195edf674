"""The golden domain cases: one instance record per case, fixed paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vmdisk.libvirt.domain import Domain, HostFacts, Interface, domain_for
from vmdisk.model import BackendName, DiskRole, FileSource, OsType
from vmdisk.record import DiskEntry, InstanceRecord, RescueState
from vmdisk.settings import Flavor

UUID = "c0ffee00-1234-4abc-8def-000000000001"
DIR = Path("/srv/vmdisk/instances") / UUID
TCG = HostFacts(virt_type="qemu", machine="pc", direct_io=True)

_ROLES = {
    "disk": DiskRole.ROOT,
    "disk.local": DiskRole.EPHEMERAL,
    "disk.swap": DiskRole.SWAP,
    "disk.config": DiskRole.CONFIG,
    "disk.config.rescue": DiskRole.CONFIG,
    "disk.rescue": DiskRole.RESCUE,
    "kernel": DiskRole.KERNEL,
    "ramdisk": DiskRole.RAMDISK,
}


def record(**extra: object) -> InstanceRecord:
    rec = InstanceRecord(
        name="golden",
        uuid=UUID,
        backend=BackendName.QCOW2,
        flavor=Flavor("m1.tiny", 1, 512, 1, 0, 0),
        image_id="file:///srv/images/golden.qcow2",
        image_base="0d5e6b61602d758984b3bf038267614d6016eb2a",
        os_type=OsType.LINUX,
        disks=(),
        created_at="2026-11-24T00:00:00+00:00",
    )
    return dataclasses.replace(rec, **extra)  # type: ignore[arg-type]


def disks(*names_and_formats: tuple[str, str]) -> tuple[DiskEntry, ...]:
    return tuple(
        DiskEntry(name, _ROLES[name], fmt, FileSource(DIR / name))
        for name, fmt in names_and_formats
    )


def cases() -> dict[str, Domain]:
    full = disks(
        ("disk", "qcow2"), ("disk.local", "qcow2"), ("disk.swap", "qcow2"), ("disk.config", "raw")
    )
    rescue = RescueState(
        "r", "b", "qcow2", disks(("disk.rescue", "qcow2"), ("disk.config.rescue", "raw"))
    )
    return {
        "qcow2-root": domain_for(record(disks=disks(("disk", "qcow2"))), DIR, TCG),
        "full": domain_for(
            record(disks=full), DIR, HostFacts("kvm", "pc", True, Interface("bridge", "br0"))
        ),
        "flat": domain_for(
            record(
                backend=BackendName.FLAT,
                disks=disks(("disk", "raw"), ("disk.local", "raw"), ("disk.swap", "raw")),
            ),
            DIR,
            HostFacts("qemu", "pc", False, Interface("user")),
        ),
        "preallocated": domain_for(
            record(preallocate=True, disks=disks(("disk", "raw"), ("disk.local", "raw"))),
            DIR,
            TCG,
        ),
        "rescue": domain_for(record(disks=full, rescue=rescue), DIR, TCG, rescue=True),
        "kernel": domain_for(
            record(
                cmdline="root=/dev/vda console=ttyS0 quiet",
                disks=disks(("disk", "qcow2"), ("kernel", "raw"), ("ramdisk", "raw")),
            ),
            DIR,
            TCG,
        ),
    }
