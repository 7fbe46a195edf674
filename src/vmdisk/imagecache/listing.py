"""`vmdisk cache list`: each base with its record, allocation, last use and users."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vmdisk.imagecache.entries import EntryKind, scan
from vmdisk.imagecache.records import read_record

if TYPE_CHECKING:
    from vmdisk.host import Host

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


def users_by_base(host: Host) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for inst in host.instances():
        for name in inst.record.bases():
            users.setdefault(name, []).append(inst.record.name)
    return users


def list_cache(host: Host) -> CacheListing:
    base_dir = host.settings.base_dir
    users = users_by_base(host)
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
