"""Instances back into images: snapshot (root disk -> new base), export, and what clone copies.

A snapshot is refused while any process has one of the instance's disks open (a running qemu:
the copy would not be consistent). The root disk is converted to raw (`-f` from disk.info,
the backing chain read from the overlay's own header) into a temporary file in the instance
directory, then goes through the intake like any untrusted image — a guest can write anything
into its disk, including a qcow2 header, so the result is inspected, hashed, recorded and
deduplicated as every other base is.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

from vmdisk.errors import ImageInUse, ImageNotFound, InvalidRequest, NotSupported
from vmdisk.fsutil import copy_sparse, fsync_dir, removing_on_error, temp_name
from vmdisk.imagecache import usage
from vmdisk.imagecache.sources import LocalFileSource, Opened, SourceFacts
from vmdisk.model import FileSource
from vmdisk.record import DiskEntry, InstanceRecord
from vmdisk.tools.runner import Runner

SNAPSHOT_SCHEME = "snapshot:"
EXPORT_FORMATS = ("qcow2", "raw")


class SnapshotSource(LocalFileSource):
    """The converted root disk, shown (and recorded) as the instance it came from."""

    def __init__(self, path: Path, label: str) -> None:
        super().__init__(path)
        self.label = label

    @property
    def display(self) -> str:
        return self.label

    def normalised(self) -> str:
        """The label, not the temporary file: the entry's recorded source, which a later
        hit (through SnapshotLabel) must match."""
        return self.label


class SnapshotLabel:
    """The source of a snapshot base, as recorded (`snapshot:NAME/UUID@TIME`): it names where
    the bytes came from, and cannot be read again. A cache hit never reads its source."""

    def __init__(self, label: str) -> None:
        self.label = label

    @property
    def display(self) -> str:
        return self.label

    def normalised(self) -> str:
        return self.label

    def resolve(self) -> SourceFacts:
        return SourceFacts()

    def open(self, offset: int = 0) -> Opened:
        raise ImageNotFound(
            f"{self.label} is a snapshot whose base is gone; it cannot be fetched again",
            reason="not-found",
        )


def file_disk(record: InstanceRecord, name: str) -> tuple[Path, str]:
    """(path, format) of one of the instance's file disks; other backends are refused."""
    disk = record.disk(name)
    if disk is None:
        raise InvalidRequest(f"instance {record.name} has no disk {name}", reason="no-disk")
    if not isinstance(disk.source, FileSource):
        raise NotSupported(
            f"snapshots of {record.backend} disks are not supported yet", reason="not-supported"
        )
    if disk.source.path.is_symlink():
        raise InvalidRequest(f"{disk.source.path} is a symlink; refused", reason="symlink")
    return disk.source.path, disk.format


def refuse_if_running(record: InstanceRecord, directory: Path) -> None:
    """A disk open by any process (qemu, libvirt's qemu, qemu-nbd) means not consistent."""
    paths = [d.source.path for d in record.all_disks() if isinstance(d.source, FileSource)]
    found = usage.holders(paths)
    if found:
        raise ImageInUse(
            f"instance {record.name} is running: {usage.describe(found)} open",
            hint="stop it first; a snapshot of a running disk would not be consistent",
            reason="running",
        )


def convert_root(runner: Runner, record: InstanceRecord, directory: Path) -> Path:
    """The root disk as a raw temporary in the instance directory; the caller removes it."""
    path, fmt = file_disk(record, "disk")
    target = temp_name(directory / ".snapshot")
    with removing_on_error(target):
        argv = ["qemu-img", "convert", "-q", "-f", fmt, "-O", "raw", str(path), str(target)]
        runner.run(argv, timeout=3600)
    return target


def export_image(
    runner: Runner, base: Path, base_format: str, dest: Path, fmt: str, compress: bool
) -> Path:
    """Write a base to `dest` as raw or qcow2 (optionally compressed): temp name + rename."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidRequest(f"export format must be one of {', '.join(EXPORT_FORMATS)}")
    if compress and fmt != "qcow2":
        raise InvalidRequest("--compress needs --format qcow2", reason="bad-option")
    dest = Path(os.path.abspath(dest))
    if dest.exists() or dest.is_symlink():
        raise InvalidRequest(f"{dest} exists; refusing to overwrite it", reason="exists")
    if not dest.parent.is_dir():
        raise InvalidRequest(f"{dest.parent} is not a directory", reason="not-a-directory")
    tmp = temp_name(dest)
    with removing_on_error(tmp):
        argv = ["qemu-img", "convert", "-q", "-f", base_format, "-O", fmt]
        argv += ["-c"] if compress else []
        runner.run([*argv, str(base), str(tmp)], timeout=3600)
        os.link(tmp, dest)  # never replaces a file that appeared meanwhile
        tmp.unlink()
    fsync_dir(dest.parent)
    return dest


def copy_disk(src: Path, dst: Path) -> str:
    """Replace `dst` by a reflink or sparse copy of `src` (a clone's ephemeral disks)."""
    tmp = temp_name(dst)
    with removing_on_error(tmp):
        how = copy_sparse(src, tmp)
        os.replace(tmp, dst)
    return how


def drive_contents(record: InstanceRecord) -> tuple[bytes | None, tuple[tuple[str, str], ...]]:
    """User data and public keys from a config-2 ISO drive, for a clone's new drive.

    Anything unreadable (vfat, nocloud, no drive) gives nothing: the clone still gets a drive.
    """
    disk = record.disk("disk.config")
    if disk is None or not isinstance(disk.source, FileSource):
        return None, ()
    import pycdlib

    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(disk.source.path))
    except Exception:  # not ISO 9660 (a vfat drive): nothing to carry over
        return None, ()
    try:
        user_data = _iso_file(iso, "/openstack/latest/user_data")
        meta = json.loads(_iso_file(iso, "/openstack/latest/meta_data.json") or b"{}")
    finally:
        iso.close()
    keys = meta.get("public_keys") or {}
    return user_data, tuple((str(k), str(v)) for k, v in keys.items())


def _iso_file(iso: object, path: str) -> bytes | None:
    buf = io.BytesIO()
    with contextlib.suppress(Exception):
        iso.get_file_from_iso_fp(buf, rr_path=path)  # type: ignore[attr-defined]
        return buf.getvalue()
    return None


def ephemeral_disks(record: InstanceRecord) -> list[DiskEntry]:
    """The disks a clone copies besides the root: ephemerals (swap and drive are made new)."""
    return [d for d in record.disks if d.name == "disk.local" or d.name.startswith("disk.eph")]
