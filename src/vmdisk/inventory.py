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
from vmdisk.imagecache.locks import Locks
from vmdisk.imagecache.records import read_record
from vmdisk.instances import Instance, InstanceStore
from vmdisk.model import FileSource
from vmdisk.tools.headers import qcow2_backing_file

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
    record does not name the base, as Nova's backing-file scan does.
    """
    used: set[str] = set()
    for inst in store.all():
        used |= inst.record.bases()
        for disk in inst.record.all_disks():
            if disk.format != "qcow2" or not isinstance(disk.source, FileSource):
                continue
            with contextlib.suppress(Exception):
                backing = qcow2_backing_file(disk.source.path)
                if backing and Path(backing).parent == base_dir:
                    used.add(Path(backing).name)
    used |= store.building_bases()
    return used


def users_by_base(instances: Iterable[Instance]) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for inst in instances:
        for name in inst.record.bases():
            users.setdefault(name, []).append(inst.record.name)
    return users


def list_cache(instances: Iterable[Instance], base_dir: Path) -> CacheListing:
    users = users_by_base(instances)
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
