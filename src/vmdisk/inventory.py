"""The join of instances and cache entries: which bases are in use, by whom, and pruning.

It sits above both the instance store and the image cache (neither imports the other's
records), which is why `cache list`, the cleaner's "in use" set and `cache prune` live here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterable, Sequence
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
from vmdisk.imagecache.dedup import sharing
from vmdisk.imagecache.entries import Entry, EntryKind, scan
from vmdisk.imagecache.records import BaseRecord, read_record
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
    shared_with: list[str] = field(default_factory=list)  # same content, blocks shared
    sharing: str | None = None  # "hardlink" or "reflink"


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
                    "shared_with": e.shared_with,
                    "sharing": e.sharing,
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
    records = {
        e.name: read_record(base_dir / e.name) for e in entries if e.kind is EntryKind.ORIGINAL
    }
    for e in entries:
        if e.kind not in SHOWN:
            continue
        record = records.get(e.name)
        twins = _twins(base_dir, e.name, record, records)
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
                shared_with=[n for n, _ in twins],
                sharing=twins[0][1] if twins else None,
            )
        )
    return CacheListing(shown, unique_allocated(base_dir, entries))


def _twins(
    base_dir: Path, name: str, record: BaseRecord | None, records: dict[str, BaseRecord | None]
) -> list[tuple[str, str]]:
    """Other bases of the same content that share blocks with this one, and how."""
    if record is None:
        return []
    same = [n for n, r in records.items() if n != name and r and r.sha256 == record.sha256]
    return [(n, how) for n in same if (how := sharing(base_dir / name, base_dir / n))]


def link_groups(base_dir: Path, entries: Iterable[Entry]) -> dict[str, str]:
    """name -> inode key, for the regular entries that share an inode with another name."""
    keys: dict[str, str] = {}
    for e in entries:
        if not e.regular:
            continue
        with contextlib.suppress(OSError):
            st = (base_dir / e.name).lstat()
            if st.st_nlink > 1:
                keys[e.name] = f"{st.st_dev}:{st.st_ino}"
    return keys


def unique_allocated(base_dir: Path, entries: Sequence[Entry]) -> int:
    """Allocated bytes with every hard-linked inode counted once."""
    groups = link_groups(base_dir, entries)
    seen: set[str] = set()
    total = 0
    for e in entries:
        if not e.regular:
            continue
        key = groups.get(e.name)
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        total += e.allocated
    return total


def instance_qcow2_disks(store: InstanceStore) -> tuple[list[Path], list[Path]]:
    """(vmdisk's qcow2 disks, foreign instance directories' qcow2 disks) on this host."""
    ours = [d for inst in store.all() for d in _qcow2_disks(inst)]
    foreign = [d for directory in store.foreign() for d in foreign_disks(directory)]
    return ours, foreign


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
    entries = scan(base_dir)
    plan = plan_cleanup(entries, in_use, hosts, started, policy, link_groups(base_dir, entries))
    if dry_run:
        return plan, None
    return plan, apply_cleanup(plan, base_dir, locks, started, policy)
