"""`vmdisk cache verify`: re-hash each base against its record and re-run the safety checks.

Re-hashing reads only a base's data (digest.py); records older than that digest hold a plain
sha256, which is still checked, the slow way.

It reports and never deletes: a failing base may still back instances, and an operator must
decide what to do with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmdisk.errors import VmdiskError
from vmdisk.imagecache import inspect
from vmdisk.imagecache.digest import matches
from vmdisk.imagecache.entries import EntryKind, scan
from vmdisk.imagecache.inspect import confirm_with_qemu
from vmdisk.imagecache.records import read_record
from vmdisk.imagecache.store import ImageCache


@dataclass
class Verdict:
    name: str
    image_id: str | None
    ok: bool = True
    problems: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image_id": self.image_id,
            "ok": self.ok,
            "problems": self.problems,
        }


def verify_cache(cache: ImageCache) -> list[Verdict]:
    verdicts = []
    for entry in scan(cache.base_dir):
        if entry.kind is not EntryKind.ORIGINAL or not entry.regular:
            continue
        path = cache.base_dir / entry.name
        record = read_record(path)
        verdict = Verdict(entry.name, record.image_id if record else None)
        verdicts.append(verdict)
        if record is None:
            verdict.fail("no record: not written by vmdisk, or its record was removed")
            continue
        if record.size != entry.size:
            verdict.fail(f"size is {entry.size}, the record says {record.size}")
        same, digest = matches(path, record.sha256)  # either kind: digest.py
        if not same:
            verdict.fail(f"sha256 digest is {digest}, the record says {record.sha256}")
        try:
            found = inspect.inspect_file(path)
            if found.qemu_format != record.format:
                verdict.fail(f"header says {found.format}, the record says {record.format}")
            else:
                confirm_with_qemu(cache.qemu.info(path, record.format), found, path)
        except VmdiskError as exc:
            verdict.fail(f"safety check: {exc.message}")
    return verdicts
