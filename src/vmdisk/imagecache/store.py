"""The `_base` cache: each image fetched once per host, inspected, converted, renamed into place.

Protocol (also in the README): a fetch holds the entry's lock exclusively, re-checks, streams
into `<sha1>.part-<rand>`, verifies, converts to another temporary name, writes the sidecar
record, then renames the base into place. Creators hold the same lock *shared* while they build
overlays on the base, touching it first and last; the cleaner takes it exclusively.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vmdisk.errors import ChecksumMismatch, ImageFetchError, InvalidRequest, VmdiskError
from vmdisk.fsutil import (
    direct_io_supported,
    ensure_real_dir,
    fsync_dir,
    open_exclusive,
    regular_file_or_none,
    removing_on_error,
    require_space,
    space_error,
    temp_name,
    touch,
)
from vmdisk.imagecache import inspect
from vmdisk.imagecache.locks import Locks
from vmdisk.imagecache.records import BaseRecord, Checksum, cache_name, read_record, write_record
from vmdisk.imagecache.sources import ImageSource, TransientFetchError, open_source
from vmdisk.progress import NoProgress, Progress
from vmdisk.tools.qemu_img import ImageInfo, QemuImg
from vmdisk.tools.runner import Limits
from vmdisk.units import GiB

BLOCK = 4096
_ZERO = bytes(1024 * 1024)
MAX_RESUMES = 5


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """What the user asked for: a source and what they claim about it."""

    source: str
    image_id: str | None = None
    declared_format: str | None = None
    checksum: Checksum | None = None
    max_size: int | None = None
    kind: str = "image"  # or "kernel" / "ramdisk": cached raw, never converted
    location: str | None = None  # rbd://fsid/pool/image/snap when Glance keeps it in Ceph


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


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A verified file ready to be renamed into place, with what the record says of it."""

    path: Path
    format: str
    detected: str
    virtual_size: int
    sha256: str
    cluster_size: int | None


class _Hasher:
    """sha256 (and the checksum's own algorithm) on a thread of its own.

    hashlib releases the GIL for large updates, so hashing runs beside the writes instead of
    after them; the bounded queue keeps memory flat however large the image.
    """

    def __init__(self, extra: str | None) -> None:
        self.sha256 = hashlib.sha256()
        self.extra = hashlib.new(extra) if extra else None
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self.sha256.update(chunk)
            if self.extra is not None:
                self.extra.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class _Sink:
    """Where downloaded bytes go: hashed, inspected and written sparsely, in one pass."""

    def __init__(self, fd: int, checksum: Checksum | None) -> None:
        self.fd = fd
        wanted = checksum.algorithm if checksum and checksum.algorithm != "sha256" else None
        self.hasher = _Hasher(wanted)
        self.inspector = inspect.StreamInspector()
        self.offset = 0

    def write(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.inspector.feed(chunk)
        _write_sparse(self.fd, chunk, self.offset)
        self.offset += len(chunk)

    def close(self) -> None:
        self.hasher.close()

    @property
    def sha256(self) -> hashlib._Hash:
        return self.hasher.sha256

    def digest(self, algorithm: str) -> str:
        if algorithm == "sha256" or self.hasher.extra is None:
            return self.hasher.sha256.hexdigest()
        return self.hasher.extra.hexdigest()


def _write_sparse(fd: int, chunk: bytes, offset: int) -> None:
    """Write only the non-zero 4 KiB blocks; holes stay holes (a raw base costs its data)."""
    if chunk == _ZERO[: len(chunk)]:
        return
    view = memoryview(chunk)
    start = None
    for pos in range(0, len(chunk), BLOCK):
        zero = view[pos : pos + BLOCK] == _ZERO[: min(BLOCK, len(chunk) - pos)]
        if zero and start is not None:
            os.pwrite(fd, view[start:pos], offset + start)
            start = None
        elif not zero and start is None:
            start = pos
    if start is not None:
        os.pwrite(fd, view[start:], offset + start)


def hash_sparse_file(path: Path) -> str:
    """sha256 of a file, reading only its data extents and hashing holes as zeros."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                data = size
            _hash_zeros(digest, data - pos)
            if data >= size:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            fh.seek(data)
            remaining = hole - data
            while remaining:
                block = fh.read(min(remaining, len(_ZERO)))
                digest.update(block)
                remaining -= len(block)
            pos = hole
    return digest.hexdigest()


def _hash_zeros(digest: hashlib._Hash, n: int) -> None:
    while n > 0:
        step = min(n, len(_ZERO))
        digest.update(_ZERO[:step])
        n -= step


class ImageCache:
    """One host's `_base` directory."""

    def __init__(
        self,
        base_dir: Path,
        locks: Locks,
        qemu: QemuImg,
        *,
        force_raw: bool = True,
        max_virtual_size: int | None = None,
        convert_limits: Limits | None = None,
        sources: Callable[[str], ImageSource] = open_source,
        progress: Progress | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.locks = locks
        self.qemu = qemu
        self.force_raw = force_raw
        self.max_virtual_size = max_virtual_size
        self.convert_limits = convert_limits or qemu.limits
        self.sources = sources
        self.progress = progress or NoProgress()

    def identify(self, request: ImageRequest) -> tuple[str, str]:
        """(image id, cache file name) for a request, without touching anything."""
        image_id = request.image_id or self.sources(request.source).normalised()
        return image_id, cache_name(image_id)

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

    def ensure(self, request: ImageRequest) -> CachedImage:
        """Fetch the image into the cache unless it is there; one fetch per host at a time."""
        ensure_real_dir(self.base_dir)
        image_id, name = self.identify(request)
        found = self.lookup(name)
        if found is not None:
            return _same_kind(found, request)
        with self.locks.exclusive(name):
            found = self.lookup(name)
            if found is not None:
                return _same_kind(found, request)
            self._remove_leftovers(name)
            return self._fetch(request, image_id, name)

    @contextlib.contextmanager
    def using(self, request: ImageRequest, *, recheck: bool = True) -> Iterator[CachedImage]:
        """Hold the base for overlay creation: shared lock, re-checked, touched on both ends.

        recheck=False hands the header re-check (inspect.recheck_raw_base) to the caller, who
        must run it before publishing anything made from the base.
        """
        image_id, name = self.identify(request)
        fetched = False
        for _attempt in range(3):
            with self.locks.shared(name):
                found = self.lookup(name)
                if found is not None:
                    _same_kind(found, request)
                    if recheck and found.record.format == "raw" and found.record.kind == "image":
                        inspect.recheck_raw_base(found.path)
                    touch(found.path)
                    yield CachedImage(image_id, name, found.path, found.record, not fetched)
                    touch(found.path)
                    return
            self.ensure(request)
            fetched = True
        raise ImageFetchError(f"the cached base for {image_id} keeps disappearing (pruned?)")

    def _remove_leftovers(self, name: str) -> None:
        # We hold the entry's exclusive lock: any temporary of this entry is from a dead fetch.
        for path in self.base_dir.glob(f"{name}*.part-*"):
            path.unlink(missing_ok=True)

    def _fetch(self, request: ImageRequest, image_id: str, name: str) -> CachedImage:
        base = self.base_dir / name
        source = self.sources(request.source)
        part, converted = temp_name(base), temp_name(base)
        with removing_on_error(part, converted):
            try:
                sink = self._download(source, part, request.checksum)
                self._verify_checksum(sink, request)
                if request.kind == "image":
                    prepared = self._prepare_image(sink, part, converted, request)
                else:
                    prepared = self._prepare_boot_file(sink, part, request.kind)
            except OSError as exc:
                mapped = space_error(exc, self.base_dir, f"image {image_id}")
                if mapped is None:
                    raise
                raise mapped from exc
            final = prepared.path
            record = BaseRecord(
                image_id=image_id,
                source=source.display,
                declared_format=request.declared_format,
                detected_format=prepared.detected,
                format=prepared.format,
                virtual_size=prepared.virtual_size,
                size=final.stat().st_size,
                sha256_download=sink.sha256.hexdigest(),
                sha256=prepared.sha256,
                fetched_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                cluster_size=prepared.cluster_size,
                kind=request.kind,
            )
            write_record(base, record)
            os.replace(final, base)
            fsync_dir(self.base_dir)
        return CachedImage(image_id, name, base, record, cached=False)

    def _prepare_image(
        self, sink: _Sink, part: Path, converted: Path, request: ImageRequest
    ) -> _Prepared:
        found = self._verify(sink, part, request)
        final, fmt, info = self._convert(part, converted, found)
        sha256 = sink.sha256.hexdigest() if final == part else hash_sparse_file(final)
        if fmt == "raw":
            inspect.recheck_raw_base(final)
        cluster = info.cluster_size if fmt != "raw" else None
        return _Prepared(final, fmt, found.format, info.virtual_size, sha256, cluster)

    def _prepare_boot_file(self, sink: _Sink, part: Path, kind: str) -> _Prepared:
        """Kernels and ramdisks are not disk images: check what they are, never convert."""
        with open(part, "rb") as fh:
            head = fh.read(4096)
        detected = inspect.check_boot_file(kind, head, sink.offset)
        digest = sink.sha256.hexdigest()
        return _Prepared(part, "raw", detected, sink.offset, digest, None)

    def _download(self, source: ImageSource, part: Path, checksum: Checksum | None) -> _Sink:
        fd = open_exclusive(part, 0o644)
        sink = _Sink(fd, checksum)
        try:
            self._stream_into(source, sink)
            os.ftruncate(fd, sink.offset)
            os.fsync(fd)
        finally:
            sink.close()
            os.close(fd)
        self.progress.done()
        return sink

    def _stream_into(self, source: ImageSource, sink: _Sink) -> None:
        resumes = 0
        started = False
        while True:
            before = sink.offset
            try:
                opened = source.open(sink.offset)
                if not started:
                    if opened.total:
                        what = f"the download of {source.display}"
                        require_space(self.base_dir, opened.total, what)
                    self.progress.start(f"fetching {source.display}", opened.total)
                    started = True
                for chunk in opened.chunks:
                    sink.write(chunk)
                    self.progress.advance(len(chunk))
            except TransientFetchError as exc:
                if sink.offset == before or resumes >= MAX_RESUMES:
                    raise ImageFetchError(str(exc), reason="download-failed") from exc
                resumes += 1
                continue
            if opened.total is None or sink.offset == opened.total:
                return
            if (
                sink.offset < opened.total
                and opened.resumable
                and sink.offset > before
                and resumes < MAX_RESUMES
            ):
                resumes += 1
                continue
            raise ImageFetchError(
                f"download of {source.display} ended at {sink.offset} of {opened.total} bytes",
                reason="truncated",
            )

    def _verify_checksum(self, sink: _Sink, request: ImageRequest) -> None:
        if request.checksum is not None:
            actual = sink.digest(request.checksum.algorithm)
            if actual != request.checksum.hexdigest:
                raise ChecksumMismatch(
                    f"{request.checksum.algorithm} of the download is {actual}, "
                    f"expected {request.checksum.hexdigest}",
                    reason="checksum-mismatch",
                )

    def _verify(self, sink: _Sink, part: Path, request: ImageRequest) -> inspect.Detection:
        limit = min(filter(None, (request.max_size, self.max_virtual_size)), default=None)
        found = sink.inspector.finish(request.declared_format, limit)
        info = self.qemu.info(part, found.qemu_format)
        confirm_with_qemu(info, found, part)
        if found.qemu_format in ("qcow2", "vmdk", "vhdx"):
            result = self.qemu.check(part, found.qemu_format)
            if not result.ok:
                raise inspect.refuse(
                    "corrupt",
                    f"qemu-img check found {result.corruptions} corruptions and "
                    f"{result.check_errors} errors in the {found.format} image",
                )
        return found

    def _convert(
        self, part: Path, converted: Path, found: inspect.Detection
    ) -> tuple[Path, str, ImageInfo]:
        if found.qemu_format == "raw" or not self.force_raw:
            return part, found.qemu_format, self.qemu.info(part, found.qemu_format)
        require_space(self.base_dir, part.stat().st_blocks * 512, "the conversion to raw")
        cache = "none" if direct_io_supported(self.base_dir) else "writeback"
        cpu = (self.convert_limits.cpu_seconds or 30) + 10 * (found.virtual_size // GiB + 1)
        limits = Limits(self.convert_limits.address_space, cpu)
        self.progress.start(f"converting {found.format} to raw", None)
        self.qemu.convert(
            part, found.qemu_format, converted, "raw", cache_mode=cache, limits=limits
        )
        self.progress.done()
        part.unlink()
        info = self.qemu.info(converted, "raw")
        if info.format != "raw" or info.virtual_size != found.virtual_size:
            raise VmdiskError(
                f"conversion produced {info.format} of {info.virtual_size} bytes, "
                f"expected raw of {found.virtual_size}"
            )
        return converted, "raw", info


def _same_kind(found: CachedImage, request: ImageRequest) -> CachedImage:
    """One image id is one thing: a disk image is never handed out as a kernel, or back."""
    if found.record.kind != request.kind:
        raise InvalidRequest(
            f"image id {found.image_id} is cached as kind {found.record.kind!r}, "
            f"not {request.kind!r}",
            reason="kind-mismatch",
            hint=f"give the {request.kind} its own id (--{request.kind}-id)",
        )
    return found


def confirm_with_qemu(info: ImageInfo, found: inspect.Detection, path: Path) -> None:
    """qemu-img's own reading must agree with ours and show no reference to another file."""
    refuse = inspect.refuse
    if info.format != found.qemu_format:
        raise refuse("format-mismatch", f"qemu-img reads {info.format}, we detected {found.format}")
    if info.backing_file:
        raise refuse("backing-file", f"{info.format} backing file {info.backing_file!r}")
    if info.data_file:
        raise refuse("data-file", f"qcow2 external data file {info.data_file!r}")
    if info.encrypted:
        raise refuse("encrypted", "qemu-img reports the image as encrypted")
    if info.corrupt:
        raise refuse("corrupt", "qemu-img reports the image as corrupt")
    if info.format == "vmdk":
        if info.create_type not in inspect.VMDK_ALLOWED_TYPES:
            raise refuse("flat-extent", f"VMDK create type {info.create_type!r} is not allowed")
        others = [f for f in info.extent_files if Path(f).resolve() != path.resolve()]
        if others:
            raise refuse("flat-extent", f"VMDK extent names another file: {others[0]!r}")
