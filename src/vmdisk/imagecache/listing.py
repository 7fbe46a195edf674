"""`image list` / `image show`: each cached image with its names, facts, users and sharing.

An image is a base in `_base` with a record. A reference (`image show REF`) is an alias, an
image id, or a unique prefix (at least 6 hex digits) of the entry name or of the sha256; a
prefix that matches several images is refused with the candidates listed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmdisk.errors import ImageNotFound, InvalidRequest
from vmdisk.imagecache.dedup import sharing
from vmdisk.imagecache.entries import EntryKind, scan
from vmdisk.imagecache.names import RETIRED_PREFIX
from vmdisk.imagecache.records import BaseRecord, read_record

MIN_PREFIX = 6
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, slots=True)
class ImageRow:
    name: str  # the entry in _base: sha1 of the image id
    path: Path
    record: BaseRecord
    aliases: list[str]
    allocated: int
    last_used: str
    users: list[str]
    shared_with: list[str] = field(default_factory=list)  # same content, blocks shared
    sharing: str | None = None  # "hardlink" or "reflink"

    @property
    def retired(self) -> bool:
        """A base a refresh replaced, kept for the instances made from it."""
        return self.record.image_id.startswith(RETIRED_PREFIX)

    @property
    def retired_from(self) -> str | None:
        """The image id a retired base was fetched as (its id is retired:<id>@<sha256>)."""
        if not self.retired:
            return None
        return self.record.image_id[len(RETIRED_PREFIX) :].rpartition("@")[0]

    @property
    def image_id(self) -> str | None:
        return None if self.retired else self.record.image_id

    def to_dict(self) -> dict[str, Any]:
        r = self.record
        return {
            "name": self.name,
            "base": str(self.path),
            "image_id": self.image_id,
            "retired_from": self.retired_from,
            "aliases": self.aliases,
            "source": r.source,
            "kind": r.kind,
            "format": r.format,
            "detected_format": r.detected_format,
            "virtual_size": r.virtual_size,
            "size": r.size,
            "allocated": self.allocated,
            "sha256": r.sha256,
            "sha256_download": r.sha256_download,
            "fetched_at": r.fetched_at,
            "last_used": self.last_used,
            "users": self.users,
            "shared_with": self.shared_with,
            "sharing": self.sharing,
        }


def image_rows(
    base_dir: Path, aliases: Mapping[str, str], users: Mapping[str, list[str]]
) -> list[ImageRow]:
    """Every cached image with a record, sorted by image id; retired ones last."""
    by_id: dict[str, list[str]] = {}
    for alias, image_id in aliases.items():
        by_id.setdefault(image_id, []).append(alias)
    rows = []
    for e in scan(base_dir):
        if e.kind is not EntryKind.ORIGINAL or not e.regular:
            continue
        record = read_record(base_dir / e.name)
        if record is None:
            continue
        rows.append(
            ImageRow(
                name=e.name,
                path=base_dir / e.name,
                record=record,
                aliases=sorted(by_id.get(record.image_id, [])),
                allocated=e.allocated,
                last_used=dt.datetime.fromtimestamp(e.mtime, dt.UTC).isoformat(timespec="seconds"),
                users=sorted(users.get(e.name, [])),
            )
        )
    return sorted(_with_sharing(rows), key=lambda r: (r.retired, r.record.image_id))


def _with_sharing(rows: list[ImageRow]) -> list[ImageRow]:
    by_sha: dict[str, list[ImageRow]] = {}
    for row in rows:
        by_sha.setdefault(row.record.sha256, []).append(row)
    out = []
    for row in rows:
        others = [o for o in by_sha[row.record.sha256] if o.name != row.name]
        shared = [(o.name, how) for o in others if (how := sharing(row.path, o.path))]
        out.append(
            dataclasses.replace(
                row,
                shared_with=[n for n, _ in shared],
                sharing=shared[0][1] if shared else None,
            )
        )
    return out


def find_image(ref: str, rows: Sequence[ImageRow], aliases: Mapping[str, str]) -> ImageRow:
    """An alias, an image id, or a unique hex prefix of the entry name or sha256."""
    target = aliases.get(ref)
    for want in (target, ref):
        exact = [r for r in rows if want is not None and r.record.image_id == want]
        if exact:
            return exact[0]
    if target is not None:
        raise ImageNotFound(
            f"alias {ref} names image {target}, which is not cached", reason="alias-dangling"
        )
    matches = []
    if len(ref) >= MIN_PREFIX and _HEX.fullmatch(ref):
        matches = [
            r
            for r in rows
            if r.name.startswith(ref) or r.record.sha256.rpartition(":")[2].startswith(ref)
        ]
    if len(matches) == 1:
        return matches[0]
    if matches:
        listed = "; ".join(f"{r.name[:12]} ({r.image_id or 'retired'})" for r in matches)
        raise InvalidRequest(
            f"{ref!r} matches {len(matches)} images: {listed}",
            hint="give more digits, the image id or an alias",
            reason="ambiguous-image",
        )
    raise ImageNotFound(
        f"no cached image {ref!r}",
        hint="vmdisk image list shows the ids and aliases",
        reason="not-found",
    )
