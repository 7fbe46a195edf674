"""The intake state machine with a typed fake source and canned `qemu-img` JSON: no process.

Raw images keep qemu-img to `info` (its JSON is recorded below), so every path through
download -> verify -> record runs here: resume, truncation, checksum, kind, leftovers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes import FakeRunner, FakeSource
from vmdisk.errors import ChecksumMismatch, ImageFetchError, InvalidRequest, UnsafeImage
from vmdisk.imagecache.digest import TreeDigest
from vmdisk.imagecache.records import Checksum, read_record
from vmdisk.imagecache.registry import SourceRegistry, resolved
from vmdisk.imagecache.request import ImageRequest, ResolvedImage
from vmdisk.imagecache.sources import ImageSource, Opened, SourceFacts, TransientFetchError
from vmdisk.imagecache.store import ImageCache
from vmdisk.locks import Locks
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import CommandResult, Limits

DATA = b"vmdisk raw test " * 8192 + bytes(256 * 1024) + b"tail" * 1024


def raw_info(argv: list[str]) -> CommandResult:
    """What `qemu-img info -f raw --output=json PATH` prints for the file named last."""
    path = Path(argv[-1])
    size = path.stat().st_size
    text = json.dumps(
        {"virtual-size": size, "filename": str(path), "format": "raw", "actual-size": size}
    )
    return CommandResult(tuple(argv), 0, text.encode(), b"", 0.0)


def make_cache(tmp_path: Path) -> tuple[ImageCache, FakeRunner]:
    runner = FakeRunner({("qemu-img", "info"): raw_info})
    base = tmp_path / "_base"
    base.mkdir()
    cache = ImageCache(base, Locks(tmp_path / "locks"), QemuImg(runner, Limits()))
    return cache, runner


def image(
    source: ImageSource, *, checksum: Checksum | None = None, kind: str = "image"
) -> ResolvedImage:
    return resolved(ImageRequest(source.display, checksum=checksum, kind=kind), source)


@dataclass
class CutOnce(FakeSource):
    """Drops the first stream after `cut_at` bytes, as a reset connection does."""

    cut_at: int = 0
    resumable: bool = True

    def open(self, offset: int = 0) -> Opened:
        self.opens.append(offset)
        first = len(self.opens) == 1

        def chunks() -> Iterator[bytes]:
            pos = offset
            while pos < len(self.data):
                if first and pos >= self.cut_at:
                    raise TransientFetchError("connection reset")
                yield self.data[pos : pos + 65536]
                pos += 65536

        return Opened(chunks(), len(self.data), self.resumable)


@dataclass
class ShortSource(FakeSource):
    """Says it has the whole image and ends early, without a resumable answer."""

    def open(self, offset: int = 0) -> Opened:
        self.opens.append(offset)
        return Opened(iter([self.data[: len(self.data) // 2]]), len(self.data), False)


def leftovers(cache: ImageCache) -> list[str]:
    return sorted(p.name for p in cache.base_dir.iterdir() if ".part-" in p.name)


def test_a_cut_download_resumes_from_where_it_got_to(tmp_path: Path) -> None:
    cache, _ = make_cache(tmp_path)
    source = CutOnce(DATA, cut_at=3 * 65536)
    cached = cache.ensure(image(source))
    assert source.opens == [0, 3 * 65536]
    tree = TreeDigest()
    tree.update(DATA)
    assert cached.record.sha256 == tree.hexdigest()  # the resumed stream, hashed once
    assert cached.record.format == "raw" and cached.record.virtual_size == len(DATA)
    assert cached.path.read_bytes() == DATA
    assert read_record(cached.path) == cached.record


def test_a_truncated_download_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    cache, _ = make_cache(tmp_path)
    with pytest.raises(ImageFetchError) as err:
        cache.ensure(image(ShortSource(DATA)))
    assert err.value.reason == "truncated"
    assert list(cache.base_dir.iterdir()) == []


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    cache, runner = make_cache(tmp_path)
    wrong = Checksum("sha256", "0" * 64)
    with pytest.raises(ChecksumMismatch) as err:
        cache.ensure(image(FakeSource(DATA), checksum=wrong))
    assert err.value.reason == "checksum-mismatch"
    assert list(cache.base_dir.iterdir()) == []
    assert runner.calls == 0  # refused before qemu-img ever saw the bytes


def test_a_right_md5_checksum_is_accepted(tmp_path: Path) -> None:
    cache, _ = make_cache(tmp_path)
    right = Checksum("md5", hashlib.md5(DATA).hexdigest())
    assert cache.ensure(image(FakeSource(DATA), checksum=right)).record.format == "raw"


def test_one_id_is_one_kind(tmp_path: Path) -> None:
    cache, _ = make_cache(tmp_path)
    cache.ensure(image(FakeSource(DATA)))
    with pytest.raises(InvalidRequest) as err:
        cache.ensure(image(FakeSource(DATA), kind="kernel"))
    assert err.value.reason == "kind-mismatch"


def test_leftovers_of_a_dead_fetch_are_removed_under_the_lock(tmp_path: Path) -> None:
    cache, _ = make_cache(tmp_path)
    img = image(FakeSource(DATA))
    stale = cache.base_dir / f"{img.name}.part-deadbeef0000"
    stale.write_bytes(b"half")
    cache.ensure(img)
    assert leftovers(cache) == []


def test_a_second_ensure_finds_the_entry_and_fetches_nothing(tmp_path: Path) -> None:
    cache, runner = make_cache(tmp_path)
    source = FakeSource(DATA)
    first = cache.ensure(image(source))
    calls = runner.calls
    again = cache.ensure(image(source))
    assert (first.cached, again.cached) == (False, True)
    assert source.opens == [0] and runner.calls == calls


class CountingRegistry(SourceRegistry):
    """Counts every source object it builds; hands out one typed fake."""

    def __init__(self, source: ImageSource) -> None:
        super().__init__()
        self.source = source
        self.opened = 0

    def open(self, text: str) -> ImageSource:
        self.opened += 1
        return self.source


def test_an_image_is_resolved_once_and_its_source_built_once(tmp_path: Path) -> None:
    cache, _ = make_cache(tmp_path)
    fake = FakeSource(DATA)
    registry = CountingRegistry(fake)
    img = registry.resolve(ImageRequest("fake://image"))
    assert cache.identify(img) == (img.image_id, img.name)
    cache.ensure(img)
    with cache.using(img) as held:
        assert held.path.read_bytes() == DATA
    assert registry.opened == 1 and fake.opens == [0]


GLANCE_SUM = Checksum("sha256", hashlib.sha256(DATA).hexdigest())
GLANCE_FACTS = SourceFacts("img-1", "raw", GLANCE_SUM, len(DATA), "rbd://f/p/i/s")


def test_source_facts_fill_what_the_user_left_out() -> None:
    img = resolved(ImageRequest("glance://img-1"), FakeSource(DATA, facts=GLANCE_FACTS))
    assert (img.image_id, img.declared_format, img.checksum) == ("img-1", "raw", GLANCE_SUM)
    assert (img.size, img.location, img.kind) == (len(DATA), "rbd://f/p/i/s", "image")


def test_user_fields_win_but_a_contradicted_format_is_refused() -> None:
    source = FakeSource(DATA, facts=GLANCE_FACTS)
    mine = Checksum("md5", "0" * 32)
    img = resolved(ImageRequest("x", image_id="mine", checksum=mine), source)
    assert (img.image_id, img.checksum) == ("mine", mine)
    with pytest.raises(UnsafeImage) as err:
        resolved(ImageRequest("x", declared_format="qcow2"), source)
    assert err.value.reason == "format-mismatch"


def test_a_rescue_from_a_glance_like_source_keeps_its_checksum(tmp_path: Path) -> None:
    """Rescue builds a bare request from the record; resolving it brings Glance's hash back."""
    cache, _ = make_cache(tmp_path)
    bad = SourceFacts("img-1", "raw", Checksum("sha256", "1" * 64))
    bare = ImageRequest("glance://img-1", image_id="img-1")
    img = CountingRegistry(FakeSource(DATA, facts=bad)).resolve(bare)
    assert img.checksum == bad.checksum
    with pytest.raises(ChecksumMismatch):
        cache.ensure(img)
