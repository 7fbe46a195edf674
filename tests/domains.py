"""The golden domain cases: one instance record and disk.info per case, fixed paths."""

from __future__ import annotations

from pathlib import Path

from vmdisk.instances import InstanceRecord
from vmdisk.libvirt.domain import Domain, HostFacts, Interface, domain_for

UUID = "c0ffee00-1234-4abc-8def-000000000001"
DIR = Path("/srv/vmdisk/instances") / UUID
TCG = HostFacts(virt_type="qemu", machine="pc", direct_io=True)


def record(**extra: object) -> InstanceRecord:
    fields: dict[str, object] = {
        "name": "golden",
        "uuid": UUID,
        "backend": "qcow2",
        "flavor": {
            "name": "m1.tiny",
            "vcpus": 1,
            "memory_mb": 512,
            "root_gb": 1,
            "ephemeral_gb": 0,
            "swap_mb": 0,
        },
        "image_id": "file:///srv/images/golden.qcow2",
        "image_base": "0d5e6b61602d758984b3bf038267614d6016eb2a",
        "os_type": "linux",
        "disks": [],
        "created_at": "2026-11-24T00:00:00+00:00",
    }
    fields.update(extra)
    return InstanceRecord(**fields)  # type: ignore[arg-type]


def formats(*names_and_formats: tuple[str, str]) -> dict[str, str]:
    return {str(DIR / name): fmt for name, fmt in names_and_formats}


def cases() -> dict[str, Domain]:
    full = formats(
        ("disk", "qcow2"), ("disk.local", "qcow2"), ("disk.swap", "qcow2"), ("disk.config", "raw")
    )
    return {
        "qcow2-root": domain_for(record(), DIR, formats(("disk", "qcow2")), TCG),
        "full": domain_for(
            record(), DIR, full, HostFacts("kvm", "pc", True, Interface("bridge", "br0"))
        ),
        "flat": domain_for(
            record(backend="flat"),
            DIR,
            formats(("disk", "raw"), ("disk.local", "raw"), ("disk.swap", "raw")),
            HostFacts("qemu", "pc", False, Interface("user")),
        ),
        "preallocated": domain_for(
            record(extra={"preallocate": True}),
            DIR,
            formats(("disk", "raw"), ("disk.local", "raw")),
            TCG,
        ),
        "rescue": domain_for(
            record(rescue={"image_id": "r"}),
            DIR,
            {**full, str(DIR / "disk.rescue"): "qcow2", str(DIR / "disk.config.rescue"): "raw"},
            TCG,
            rescue=True,
        ),
        "kernel": domain_for(
            record(cmdline="root=/dev/vda console=ttyS0 quiet"),
            DIR,
            {**formats(("disk", "qcow2")), str(DIR / "kernel"): "raw", str(DIR / "ramdisk"): "raw"},
            TCG,
        ),
    }
