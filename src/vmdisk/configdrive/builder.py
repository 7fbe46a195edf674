"""Write a config drive: ISO9660 (Rock Ridge + Joliet) in-process with pycdlib, or vfat.

vfat is made without mounting: mkfs.vfat on a sparse file, then mtools copies a staged tree.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from vmdisk.configdrive.metadata import Identity, config_drive_files, nocloud_files
from vmdisk.errors import InvalidRequest
from vmdisk.fsutil import open_exclusive
from vmdisk.lazy import LazyModule
from vmdisk.model import ConfigDriveSpec, DiskRole, InstancePlan
from vmdisk.tools.runner import Runner
from vmdisk.units import MiB

if TYPE_CHECKING:
    import pycdlib
else:  # imported when an ISO drive is written (vmdisk/lazy.py)
    pycdlib = LazyModule("pycdlib")

VFAT_SIZE = 64 * MiB
VFAT_PAYLOAD_MAX = 60 * MiB  # leave room for the FATs and directories


def identity_for(plan: InstancePlan) -> Identity:
    letters = "abcdefghijklmnopqrstuvwxyz"
    disks = [d for d in plan.disks if d.role is not DiskRole.CONFIG]
    return Identity(
        uuid=plan.uuid,
        name=plan.name,
        flavor=plan.flavor.name,
        image_id=plan.image_id,
        disks=tuple(f"vd{letters[i]}" for i in range(len(disks))),
        random_seed=os.urandom(512),
    )


def drive_files(plan: InstancePlan, spec: ConfigDriveSpec) -> tuple[str, dict[str, bytes]]:
    """(volume label, files) for the drive the spec asks for."""
    identity = identity_for(plan)
    if spec.seed == "nocloud":
        return "cidata", nocloud_files(identity, spec)
    return "config-2", config_drive_files(identity, spec)


#: The drive carries admin_pass and keys: readable by its owner only (libvirt's dynamic
#: ownership hands it to the qemu user when the guest starts).
DRIVE_MODE = 0o600


def build_drive(plan: InstancePlan, spec: ConfigDriveSpec, target: Path, runner: Runner) -> None:
    label, files = drive_files(plan, spec)
    if spec.format == "vfat":
        build_vfat(files, label, target, runner)
    else:
        build_iso(files, label, target)


def build_iso(files: dict[str, bytes], label: str, target: Path) -> None:
    iso = pycdlib.PyCdlib()
    # Interchange level 4 keeps real (lowercase, long) names in the primary tree as well.
    iso.new(
        interchange_level=4, joliet=3, rock_ridge="1.09", vol_ident=label, app_ident_str="vmdisk"
    )
    made: set[str] = set()
    for rel in sorted(files):
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            directory = "/" + "/".join(parts[:depth])
            if directory not in made:
                iso.add_directory(directory, rr_name=parts[depth - 1], joliet_path=directory)
                made.add(directory)
        data = files[rel]
        iso.add_fp(io.BytesIO(data), len(data), "/" + rel, rr_name=parts[-1], joliet_path="/" + rel)
    fd = open_exclusive(target, DRIVE_MODE)
    with os.fdopen(fd, "wb") as fh:
        iso.write_fp(fh)
    iso.close()


def build_vfat(files: dict[str, bytes], label: str, target: Path, runner: Runner) -> None:
    payload = sum(len(d) for d in files.values())
    if payload > VFAT_PAYLOAD_MAX:
        raise InvalidRequest(
            f"config drive content is {payload} bytes; a vfat drive holds at most "
            f"{VFAT_PAYLOAD_MAX}",
            reason="too-large",
            hint='use config_drive_format = "iso9660" or send less user data/files',
        )
    fd = open_exclusive(target, DRIVE_MODE)
    try:
        os.ftruncate(fd, VFAT_SIZE)
    finally:
        os.close(fd)
    runner.run(["mkfs.vfat", "-n", label, str(target)], timeout=60)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".drive-") as staging:
        tops = set()
        for rel, data in files.items():
            path = Path(staging, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            tops.add(rel.split("/")[0])
        sources = [str(Path(staging, top)) for top in sorted(tops)]
        runner.run(
            ["mcopy", "-s", "-i", str(target), *sources, "::/"],
            timeout=120,
            env={"MTOOLS_SKIP_CHECK": "1"},
        )
