"""`cache list` and the in-use scan over a tmp `_base`, with typed fakes for host and store.

The fakes carry only what listing.py and usage.py read (settings.base_dir, instances with a
record naming its bases, building bases), so these tests do not depend on how Host and
InstanceStore are built.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from vmdisk.imagecache.listing import list_cache, users_by_base
from vmdisk.imagecache.usage import bases_in_use
from vmdisk.tools.headers import QCOW_MAGIC

SHA = hashlib.sha1(b"cirros").hexdigest()
SHA2 = hashlib.sha1(b"debian").hexdigest()
WHEN = 1_800_000_000


@dataclass(frozen=True)
class FakeRecord:
    name: str
    uses: frozenset[str]

    def bases(self) -> set[str]:
        return set(self.uses)


@dataclass(frozen=True)
class FakeInstance:
    record: FakeRecord
    path: Path


@dataclass(frozen=True)
class FakeSettings:
    base_dir: Path


@dataclass
class FakeHost:
    settings: FakeSettings
    members: list[FakeInstance] = field(default_factory=list)

    def instances(self) -> list[FakeInstance]:
        return self.members


@dataclass
class FakeStore:
    members: list[FakeInstance]
    building: set[str] = field(default_factory=set)

    def all(self) -> list[FakeInstance]:
        return self.members

    def building_bases(self) -> set[str]:
        return set(self.building)


def record_json(image_id: str, virtual_size: int) -> bytes:
    return json.dumps(
        {
            "image_id": image_id,
            "source": f"file:///{image_id}.img",
            "declared_format": None,
            "detected_format": "qcow2",
            "format": "raw",
            "virtual_size": virtual_size,
            "size": virtual_size,
            "sha256_download": "0" * 64,
            "sha256": "1" * 64,
            "fetched_at": "2027-01-15T08:00:00+00:00",
        }
    ).encode()


def cache(tmp_path: Path) -> Path:
    base = tmp_path / "_base"
    base.mkdir()
    (base / SHA).write_bytes(b"r" * 8192)
    (base / (SHA + ".info")).write_bytes(record_json("cirros", 8192))
    (base / f"{SHA}_10737418240").write_bytes(b"")
    (base / "swap_512").write_bytes(b"")
    (base / f"{SHA2}.part-0a1b").write_bytes(b"partial")
    for path in base.iterdir():
        os.utime(path, (WHEN, WHEN))
    return base


def inst(tmp_path: Path, name: str, uses: set[str]) -> FakeInstance:
    path = tmp_path / "instances" / name
    path.mkdir(parents=True)
    return FakeInstance(FakeRecord(name, frozenset(uses)), path)


def test_cache_list_shows_bases_with_records_and_users(tmp_path: Path) -> None:
    base = cache(tmp_path)
    host = FakeHost(
        FakeSettings(base),
        [inst(tmp_path, "web", {SHA, "swap_512"}), inst(tmp_path, "db", {SHA})],
    )
    assert users_by_base(host) == {SHA: ["web", "db"], "swap_512": ["web"]}  # type: ignore[arg-type]
    listing = list_cache(host)  # type: ignore[arg-type]
    by_name = {e.name: e for e in listing.entries}
    assert sorted(by_name) == sorted([SHA, f"{SHA}_10737418240", "swap_512"])
    original = by_name[SHA]
    assert (original.kind, original.image_id, original.format) == ("original", "cirros", "raw")
    assert original.virtual_size == 8192
    assert original.users == ["db", "web"]
    when = dt.datetime.fromtimestamp(WHEN, dt.UTC).isoformat(timespec="seconds")
    assert original.last_used == when
    swap = by_name["swap_512"]
    assert (swap.image_id, swap.format, swap.virtual_size, swap.users) == (None, "raw", 0, ["web"])
    regular = [p for p in base.iterdir() if p.is_file()]
    assert listing.total_allocated == sum(p.lstat().st_blocks * 512 for p in regular)
    as_dict = listing.to_dict()
    assert as_dict["total_allocated"] == listing.total_allocated
    assert {e["name"] for e in as_dict["entries"]} == set(by_name)
    assert json.dumps(as_dict)  # serialisable for --json


def test_cache_list_of_a_missing_cache_is_empty(tmp_path: Path) -> None:
    listing = list_cache(FakeHost(FakeSettings(tmp_path / "nowhere")))  # type: ignore[arg-type]
    assert listing.entries == [] and listing.total_allocated == 0


def qcow2_with_backing(path: Path, backing: str) -> None:
    name = backing.encode()
    head = QCOW_MAGIC + struct.pack(">IQIIQ", 3, 512, len(name), 16, 1 << 30)
    path.write_bytes(head.ljust(512, b"\0") + name)


def test_bases_in_use_from_records_backing_files_and_builds(tmp_path: Path) -> None:
    base = cache(tmp_path)
    named = inst(tmp_path, "named", {SHA})
    unnamed = inst(tmp_path, "unnamed", set())  # its record lost the base; the header knows
    disk = unnamed.path / "disk"
    qcow2_with_backing(disk, str(base / f"{SHA}_10737418240"))
    elsewhere = unnamed.path / "disk.eph0"
    qcow2_with_backing(elsewhere, "/somewhere/else/base")
    raw = unnamed.path / "disk.swap"
    raw.write_bytes(b"")
    (unnamed.path / "disk.info").write_text(
        json.dumps({str(disk): "qcow2", str(elsewhere): "qcow2", str(raw): "raw"})
    )
    broken = inst(tmp_path, "broken", {"swap_512"})
    (broken.path / "disk.info").write_text("not json")  # skipped, not fatal
    store = FakeStore([named, unnamed, broken], building={SHA2})
    used = bases_in_use(store, base)  # type: ignore[arg-type]
    assert used == {SHA, f"{SHA}_10737418240", "swap_512", SHA2}
