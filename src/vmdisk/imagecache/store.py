"""The `_base` cache: each image fetched once per host, inspected, converted, renamed into place.

Protocol (also in the README): a fetch holds the entry's lock exclusively, re-checks, streams
into `<sha1>.part-<rand>`, verifies, converts to another temporary name, writes the sidecar
record, then renames the base into place. Creators hold the same lock *shared* while they build
overlays on the base, touching it first and last; the cleaner takes it exclusively.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vmdisk.errors import CacheEntryConflict, ImageFetchError
from vmdisk.fsutil import ensure_real_dir, regular_file_or_none, touch
from vmdisk.imagecache import inspect
from vmdisk.imagecache.inspect import confirm_with_qemu
from vmdisk.imagecache.intake import MAX_RESUMES, Intake, hash_sparse_file
from vmdisk.imagecache.pins import check_pins
from vmdisk.imagecache.records import BaseRecord, read_record
from vmdisk.imagecache.request import ImageRequest, ResolvedImage
from vmdisk.locks import Locks
from vmdisk.tools.qemu_img import QemuImg

# Re-exported: callers (and other branches) import these from here.
__all__ = [
    "MAX_RESUMES",
    "CachedImage",
    "ImageCache",
    "ImageRequest",
    "ResolvedImage",
    "confirm_with_qemu",
    "hash_sparse_file",
]


@dataclass(frozen=True, slots=True)
class CachedImage:
    image_id: str
    name: str
    path: Path
    record: BaseRecord
    cached: bool  # it was already in the cache before this call

    def to_dict(self) -> dict[str, object]:
        return {
            "image_id": self.image_id,
            "base": str(self.path),
            "format": self.record.format,
            "detected_format": self.record.detected_format,
            "virtual_size": self.record.virtual_size,
            "sha256": self.record.sha256,
            "cached": self.cached,
        }


class ImageCache:
    """One host's `_base` directory."""

    def __init__(
        self,
        base_dir: Path,
        locks: Locks,
        qemu: QemuImg,
        *,
        intake: Intake | None = None,
        in_use: Callable[[str], bool] | None = None,
    ) -> None:
        """`intake` fetches what is missing; by default one with Nova's defaults. `in_use`
        says whether an instance uses a base; without it a replace is always refused."""
        self.base_dir = base_dir
        self.locks = locks
        self.qemu = qemu
        self.intake = intake or Intake(base_dir, qemu)
        self.in_use = in_use or (lambda _name: True)

    def identify(self, image: ResolvedImage) -> tuple[str, str]:
        """(image id, cache file name) of a resolved image, without touching anything."""
        return image.image_id, image.name

    def lookup(self, name: str) -> CachedImage | None:
        """A complete entry: the base is a regular file and its record agrees with it."""
        base = self.base_dir / name
        st = regular_file_or_none(base)
        if st is None:
            return None
        record = read_record(base)
        if record is None or record.size != st.st_size:
            return None
        return CachedImage(record.image_id, name, base, record, cached=True)

    def ensure(self, request: ResolvedImage, *, root_size: int | None = None) -> CachedImage:
        """Fetch the image into the cache unless it is there; one fetch per host at a time.

        A hit is checked against everything the request pins (pins.check_pins); `root_size`
        is the flavor's root disk, refused before any byte expands if the image is larger.
        """
        ensure_real_dir(self.base_dir)
        image_id, name = self.identify(request)
        found = self.lookup(name)
        if found is not None and not request.request.replace:
            return self._pinned(found, request, root_size)
        with self.locks.exclusive(
            name, waiting=self.intake.progress, what=f"fetching {request.source.display}"
        ):
            found = self.lookup(name)
            if found is not None:
                if not request.request.replace:
                    return self._pinned(found, request, root_size)
                try:
                    return self._pinned(found, request, root_size)
                except CacheEntryConflict:
                    self._check_replaceable(found, request)
            self._remove_leftovers(name)
            base = self.base_dir / name
            record = self.intake.fetch(request, base, root_size=root_size)
            return CachedImage(image_id, name, base, record, cached=False)

    def _pinned(
        self, found: CachedImage, request: ResolvedImage, root_size: int | None
    ) -> CachedImage:
        check_pins(
            found.record,
            request,
            max_virtual_size=self.intake.max_virtual_size,
            root_size=root_size,
        )
        return found

    def _check_replaceable(self, found: CachedImage, request: ResolvedImage) -> None:
        if self.in_use(found.name):
            raise CacheEntryConflict(
                f"cannot replace the cached entry of {found.image_id} "
                f"(from {found.record.source}): instances use it",
                reason="in-use",
                hint="delete those instances first, or give this image its own --id",
            )

    @contextlib.contextmanager
    def using(
        self, request: ResolvedImage, *, recheck: bool = True, root_size: int | None = None
    ) -> Iterator[CachedImage]:
        """Hold the base for overlay creation: shared lock, re-checked, touched on both ends.

        recheck=False hands the header re-check (inspect.recheck_raw_base) to the caller, who
        must run it before publishing anything made from the base.
        """
        image_id, name = self.identify(request)
        fetched = False
        if request.request.replace:
            self.ensure(request, root_size=root_size)
            fetched = True
        for _attempt in range(3):
            with self.locks.shared(name, waiting=self.intake.progress, what=image_id):
                found = self.lookup(name)
                if found is not None:
                    self._pinned(found, request, root_size)
                    if recheck and found.record.format == "raw" and found.record.kind == "image":
                        inspect.recheck_raw_base(found.path)
                    touch(found.path)
                    yield CachedImage(image_id, name, found.path, found.record, not fetched)
                    touch(found.path)
                    return
            self.ensure(request, root_size=root_size)
            fetched = True
        raise ImageFetchError(f"the cached base for {image_id} keeps disappearing (pruned?)")

    def _remove_leftovers(self, name: str) -> None:
        # We hold the entry's exclusive lock: any temporary of this entry is from a dead fetch.
        for path in self.base_dir.glob(f"{name}*.part-*"):
            path.unlink(missing_ok=True)
