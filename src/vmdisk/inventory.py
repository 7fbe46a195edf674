"""The join of instances and cache entries: which bases are in use, by whom, and pruning.

It sits above both the instance store and the image cache (neither imports the other's
records), which is why `cache list`, the cleaner's "in use" set and `cache prune` live here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmdisk import diskinfo
from vmdisk.fsutil import write_atomic
from vmdisk.imagecache.cleaner import (
    CleanupPlan,
    CleanupPolicy,
    CleanupResult,
    apply_cleanup,
    hostname,
    plan_cleanup,
    read_hosts,
    register_host,
)
from vmdisk.imagecache.entries import EntryKind, scan
from vmdisk.imagecache.records import read_record
from vmdisk.instances import Instance, InstanceStore
from vmdisk.locks import Locks
from vmdisk.model import FileSource
from vmdisk.tools.headers import QCOW_MAGIC, qcow2_backing_file

REGISTRY = "compute_nodes"

SHOWN = (EntryKind.ORIGINAL, EntryKind.RESIZED, EntryKind.SWAP, EntryKind.EPHEMERAL)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    name: str
    kind: str
    image_id: str | None
    format: str | None
    virtual_size: int | None
    allocated: int
    last_used: str
    users: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CacheListing:
    entries: list[CacheEntry]
    total_allocated: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_allocated": self.total_allocated,
            "entries": [
                {
                    "name": e.name,
                    "kind": e.kind,
                    "image_id": e.image_id,
                    "format": e.format,
                    "virtual_size": e.virtual_size,
                    "allocated": e.allocated,
                    "last_used": e.last_used,
                    "users": e.users,
                }
                for e in self.entries
            ],
        }


def bases_in_use(store: InstanceStore, base_dir: Path) -> set[str]:
    """Every entry referenced by a record, a disk's backing file, or a build in progress.

    Backing files are read from the qcow2 headers (no subprocess): they catch instances whose
    record does not name the base, as Nova's backing-file scan does, and Nova's own instance
    directories on a compute node vmdisk shares.
    """
    used: set[str] = set()
    for inst in store.all():
        used |= inst.record.bases()
        used |= _backing_bases(_qcow2_disks(inst), base_dir)
    for directory in store.foreign():
        used |= _backing_bases(foreign_disks(directory), base_dir)
    used |= store.building_bases()
    return used


def _qcow2_disks(inst: Instance) -> list[Path]:
    return [
        d.source.path
        for d in inst.record.all_disks()
        if d.format == "qcow2" and isinstance(d.source, FileSource)
    ]


def foreign_disks(directory: Path) -> list[Path]:
    """The qcow2 disks of an instance directory vmdisk did not make: those its disk.info
    pins as qcow2 (Nova's format pin), else every `disk*` file with a qcow2 header."""
    formats = diskinfo.read(directory) if (directory / diskinfo.FILENAME).is_file() else {}
    if formats:
        return [directory / Path(p).name for p, fmt in formats.items() if fmt == "qcow2"]
    return [p for p in sorted(directory.glob("disk*")) if _is_qcow2(p)]


def _is_qcow2(path: Path) -> bool:
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        return fh.read(4) == QCOW_MAGIC
    return False


def _backing_bases(disks: Iterable[Path], base_dir: Path) -> set[str]:
    found = set()
    for disk in disks:
        with contextlib.suppress(Exception):
            backing = qcow2_backing_file(disk)
            if backing and Path(backing).parent == base_dir:
                found.add(Path(backing).name)
    return found


def users_by_base(store: InstanceStore, base_dir: Path) -> dict[str, list[str]]:
    """Who uses each base: instances by name, foreign (Nova) directories by their uuid."""
    users: dict[str, list[str]] = {}
    for inst in store.all():
        for name in inst.record.bases() | _backing_bases(_qcow2_disks(inst), base_dir):
            users.setdefault(name, []).append(inst.record.name)
    for directory in store.foreign():
        for name in _backing_bases(foreign_disks(directory), base_dir):
            users.setdefault(name, []).append(directory.name)
    return users


def list_cache(store: InstanceStore, base_dir: Path) -> CacheListing:
    users = users_by_base(store, base_dir)
    shown = []
    entries = scan(base_dir)
    for e in entries:
        if e.kind not in SHOWN:
            continue
        record = read_record(base_dir / e.name) if e.kind is EntryKind.ORIGINAL else None
        shown.append(
            CacheEntry(
                name=e.name,
                kind=str(e.kind),
                image_id=record.image_id if record else None,
                format=record.format if record else "raw",
                virtual_size=record.virtual_size if record else e.size,
                allocated=e.allocated,
                last_used=dt.datetime.fromtimestamp(e.mtime, dt.UTC).isoformat(timespec="seconds"),
                users=sorted(users.get(e.name, [])),
            )
        )
    return CacheListing(shown, sum(e.allocated for e in entries if e.regular))


def prune(
    store: InstanceStore,
    base_dir: Path,
    locks: Locks,
    policy: CleanupPolicy,
    *,
    dry_run: bool = False,
) -> tuple[CleanupPlan, CleanupResult | None]:
    """One pass of the image cache manager; see imagecache/cleaner.py for the protocol."""
    started = time.time()
    registry = store.root / REGISTRY
    hosts = read_hosts(registry)
    if not dry_run:
        store.reap()
        hosts = register_host(registry, locks, hostname(), started, write_atomic)
    in_use = bases_in_use(store, base_dir)
    plan = plan_cleanup(scan(base_dir), in_use, hosts, started, policy)
    if dry_run:
        return plan, None
    return plan, apply_cleanup(plan, base_dir, locks, started, policy)
