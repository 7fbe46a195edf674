"""The intake pipeline: download -> verify -> convert one image into a cache entry.

store.ImageCache decides *when* to fetch (under the entry's exclusive lock, after a
re-check); this module decides *how*: stream the bytes into `<sha1>.part-<rand>` hashing and
inspecting them in one pass, resume a cut download, check the checksum, ask qemu-img to agree
with the inspector, convert to raw under limits, and write the sidecar record before the rename.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vmdisk.errors import ChecksumMismatch, ImageFetchError, ToolLimitExceeded, VmdiskError
from vmdisk.fsutil import (
    direct_io_supported,
    fsync_dir,
    open_exclusive,
    removing_on_error,
    require_space,
    space_error,
    temp_name,
)
from vmdisk.imagecache import inspect
from vmdisk.imagecache.bounds import Bounds, DownloadPolicy, Watchdog
from vmdisk.imagecache.digest import TreeDigest, file_digest
from vmdisk.imagecache.inspect import confirm_with_qemu
from vmdisk.imagecache.pins import flavor_too_small
from vmdisk.imagecache.records import BaseRecord, Checksum, write_record
from vmdisk.imagecache.request import ResolvedImage
from vmdisk.imagecache.sources import ImageSource, LocalFileSource, Opened, TransientFetchError
from vmdisk.progress import NoProgress, Progress
from vmdisk.tools.qemu_img import ImageInfo, QemuImg
from vmdisk.tools.runner import Limits
from vmdisk.units import GiB

BLOCK = 4096
_ZERO = bytes(1024 * 1024)
_ZERO_BLOCK = _ZERO[:BLOCK]
MAX_RESUMES = 5
#: What force_raw_images = false keeps as it came. Every backend can put a qcow2 overlay on (or
#: copy and grow) raw and qcow2; vmdk, vhdx and vpc cannot be grown by `qemu-img resize`, so
#: they always become raw.
KEPT_FORMATS = frozenset({"qcow2"})


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
    """The download's digests, on a thread of its own.

    Always the tree digest (digest.py: what the record keeps, zero leaves free); the user's
    checksum algorithm over every byte only when a checksum was given, so it stays exact.
    hashlib releases the GIL for large updates, so hashing runs beside the writes instead of
    after them; the bounded queue keeps memory flat however large the image.
    """

    def __init__(self, extra: str | None) -> None:
        self.tree = TreeDigest()
        self.result = _Digest(self.tree)  # a new hasher (a restarted download) has a new one
        self.extra = hashlib.new(extra) if extra else None
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self.tree.update(chunk)
            if self.extra is not None:
                self.extra.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class _Digest:
    """The tree digest of the download, read once (hexdigest() may be asked several times)."""

    def __init__(self, tree: TreeDigest) -> None:
        self._tree = tree
        self._hex: str | None = None

    def hexdigest(self) -> str:
        if self._hex is None:
            self._hex = self._tree.hexdigest()
        return self._hex


class _Sink:
    """Where downloaded bytes go: hashed, inspected and written sparsely, in one pass."""

    def __init__(self, fd: int, checksum: Checksum | None, *, write: bool = True) -> None:
        self.fd = fd
        self.writes = write  # False: the file already holds the bytes (a reflinked clone)
        self._wanted = checksum.algorithm if checksum else None
        self.hasher = _Hasher(self._wanted)
        self.inspector = inspect.StreamInspector()
        self.offset = 0

    def write(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.inspector.feed(chunk)
        if self.writes:
            _write_sparse(self.fd, chunk, self.offset)
        self.offset += len(chunk)

    def close(self) -> None:
        self.hasher.close()

    def rewind(self) -> None:
        """Start again at byte 0: the source could not resume the same content (restarted)."""
        self.hasher.close()
        self.hasher = _Hasher(self._wanted)
        self.inspector = inspect.StreamInspector()
        os.ftruncate(self.fd, 0)
        self.offset = 0

    @property
    def sha256(self) -> _Digest:
        """The download's digest as records keep it (digest.TAG), for the base and the record."""
        return self.hasher.result

    def digest(self, algorithm: str) -> str:
        """The user's checksum algorithm over every byte of the download (exact)."""
        if self.hasher.extra is None or self.hasher.extra.name != algorithm:
            raise VmdiskError(f"no {algorithm} was computed for this download")
        return self.hasher.extra.hexdigest()


def _cloned(source: ImageSource, fd: int, part: Path) -> tuple[ImageSource, bool]:
    """A local file on the same reflink file system is cloned into `.part` (no bytes copied)
    and the clone is what gets hashed and inspected; anything else streams as before."""
    if isinstance(source, LocalFileSource) and source.clone_into(fd):
        return LocalFileSource(part), True
    return source, False


def _write_sparse(fd: int, chunk: bytes, offset: int) -> None:
    """Write only the non-zero 4 KiB blocks; holes stay holes (a raw base costs its data)."""
    if chunk == _ZERO[: len(chunk)]:
        return
    view = memoryview(chunk)
    start = None
    for pos in range(0, len(chunk), BLOCK):
        # startswith at an offset is a memcmp in place; comparing memoryview slices is
        # element by element, milliseconds per MiB of zero blocks.
        block = _ZERO_BLOCK if len(chunk) - pos >= BLOCK else _ZERO[: len(chunk) - pos]
        zero = chunk.startswith(block, pos)
        if zero and start is not None:
            os.pwrite(fd, view[start:pos], offset + start)
            start = None
        elif not zero and start is None:
            start = pos
    if start is not None:
        os.pwrite(fd, view[start:], offset + start)


def hash_sparse_file(path: Path) -> str:
    """The record's digest of a base file (digest.py): only the leaves holding data are read."""
    return file_digest(path)


#: CPU seconds a conversion may use per GiB of the file really downloaded, and in all.
CONVERT_CPU_PER_GIB = 20
CONVERT_CPU_CEILING = 1800


def convert_cpu_limit(base: int | None, file_size: int) -> int:
    """CPU for `qemu-img convert`: scales with the bytes that are really there, never with
    the virtual size a header declares (a 64 KiB file must not buy an hour), and is capped."""
    budget = (base or 30) + CONVERT_CPU_PER_GIB * (file_size // GiB + 1)
    return min(budget, CONVERT_CPU_CEILING)


def _download_digests(sink: _Sink, checksum: Checksum | None) -> dict[str, str]:
    """What a later cache hit can be pinned against without reading the download again: the
    user's own algorithm over every byte. The record's tree digest (digest.TAG) is no
    user checksum, so a hit pinned with an algorithm not computed here is unverifiable."""
    if checksum is None:
        return {}
    return {checksum.algorithm: sink.digest(checksum.algorithm)}


@contextlib.contextmanager
def _limits_refuse(image_id: str) -> Iterator[None]:
    """qemu-img killed by its limits while reading an untrusted image: the image is refused."""
    try:
        yield
    except ToolLimitExceeded as exc:
        if exc.reason != "resource-limit":
            raise
        raise inspect.refuse("resource-limit", f"image {image_id}: {exc.message}") from exc


class Intake:
    """Turns one source into one verified base file; holds no lock of its own."""

    def __init__(
        self,
        base_dir: Path,
        qemu: QemuImg,
        *,
        force_raw: bool = True,
        max_virtual_size: int | None = None,
        convert_limits: Limits | None = None,
        progress: Progress | None = None,
        download: DownloadPolicy | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.qemu = qemu
        self.force_raw = force_raw
        self.max_virtual_size = max_virtual_size
        self.convert_limits = convert_limits or qemu.limits
        self.progress = progress or NoProgress()
        self.download = download or DownloadPolicy()

    def fetch(
        self, request: ResolvedImage, base: Path, *, root_size: int | None = None
    ) -> BaseRecord:
        """Download, verify and convert into `base`; the caller holds the entry's lock.

        `root_size` (the flavor's root disk) and the size limits are checked against the
        header's virtual size as soon as it arrives, long before anything is converted.
        Every temporary is removed if anything fails; the record is written before the rename.
        """
        source, image_id = request.source, request.image_id
        part, converted = temp_name(base), temp_name(base)
        with removing_on_error(part, converted):
            try:
                sink = self._download(request, part, root_size)
                self._verify_checksum(sink, request)
                if request.kind == "image":
                    with _limits_refuse(image_id):
                        prepared = self._prepare_image(sink, part, converted, request, root_size)
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
                source_id=source.normalised(),
                checksums=_download_digests(sink, request.checksum),
            )
            write_record(base, record)
            os.replace(final, base)
            fsync_dir(self.base_dir)
        return record

    def _prepare_image(
        self,
        sink: _Sink,
        part: Path,
        converted: Path,
        request: ResolvedImage,
        root_size: int | None = None,
    ) -> _Prepared:
        found = self._verify(sink, part, request, root_size)
        final, fmt, info = self._convert(part, converted, found)
        sha256 = sink.sha256.hexdigest() if final == part else hash_sparse_file(final)
        if fmt == "raw":
            inspect.recheck_raw_base(final)
        # Only a qcow2 base's cluster size is one an overlay can reuse (a VHDX block is 32 MiB).
        cluster = info.cluster_size if fmt == "qcow2" else None
        return _Prepared(final, fmt, found.format, info.virtual_size, sha256, cluster)

    def _prepare_boot_file(self, sink: _Sink, part: Path, kind: str) -> _Prepared:
        """Kernels and ramdisks are not disk images: check what they are, never convert."""
        with open(part, "rb") as fh:
            head = fh.read(4096)
        detected = inspect.check_boot_file(kind, head, sink.offset)
        digest = sink.sha256.hexdigest()
        return _Prepared(part, "raw", detected, sink.offset, digest, None)

    def _download(self, request: ResolvedImage, part: Path, root_size: int | None) -> _Sink:
        fd = open_exclusive(part, 0o644)
        source, cloned = _cloned(request.source, fd, part)
        sink = _Sink(fd, request.checksum, write=not cloned)
        bounds = Bounds(
            self.base_dir,
            f"the download of {request.source.display}",
            declared_size=request.size,
            virtual_limit=self._virtual_limit(request),
            root_size=root_size,
            raw_only=request.kind != "image",
        )
        if request.declared_format == "raw":
            bounds.decide("raw", None)  # its bytes are its size from the first one
        watchdog = Watchdog(self.download, bounds.what)
        try:
            self._stream_into(source, sink, bounds, watchdog)
            os.ftruncate(fd, sink.offset)
            os.fsync(fd)
        finally:
            watchdog.stop()
            sink.close()
            os.close(fd)
        self.progress.done()
        return sink

    def _virtual_limit(self, request: ResolvedImage) -> int | None:
        return min(filter(None, (request.max_size, self.max_virtual_size)), default=None)

    def _stream_into(
        self, source: ImageSource, sink: _Sink, bounds: Bounds, watchdog: Watchdog
    ) -> None:
        """Stream with resumes; every chunk is checked against the bounds, and the watchdog
        aborts a read that is too slow or too late (its verdict wins over the cut it caused)."""
        resumes = 0
        started = False
        opened: Opened | None = None
        while True:
            before = sink.offset
            try:
                opened = source.open(sink.offset)
                if opened.restarted:
                    sink.rewind()
                    before = 0
                watchdog.watch(opened)
                if not started:
                    bounds.total = opened.total
                    self.progress.start(f"fetching {source.display}", opened.total)
                    started = True
                for chunk in opened.chunks:
                    bounds.before_chunk(sink.offset, len(chunk), sink.fd)
                    sink.write(chunk)
                    watchdog.offset = sink.offset
                    if not bounds.decided and (early := sink.inspector.early_size()):
                        bounds.decide(*early)
                    bounds.after_chunk(sink.offset)
                    self.progress.advance(len(chunk))
                watchdog.check()
            except TransientFetchError as exc:
                watchdog.check()
                if sink.offset == before or resumes >= MAX_RESUMES:
                    raise ImageFetchError(str(exc), reason="download-failed") from exc
                resumes += 1
                continue
            except BaseException:
                if opened is not None:
                    opened.close()  # a refusal mid-body: drop the connection, do not drain it
                raise
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

    def _verify_checksum(self, sink: _Sink, request: ResolvedImage) -> None:
        if request.checksum is not None:
            actual = sink.digest(request.checksum.algorithm)
            if actual != request.checksum.hexdigest:
                raise ChecksumMismatch(
                    f"{request.checksum.algorithm} of the download is {actual}, "
                    f"expected {request.checksum.hexdigest}",
                    reason="checksum-mismatch",
                )

    def _verify(
        self, sink: _Sink, part: Path, request: ResolvedImage, root_size: int | None = None
    ) -> inspect.Detection:
        found = sink.inspector.finish(request.declared_format, self._virtual_limit(request))
        if root_size is not None and found.virtual_size > root_size:
            raise flavor_too_small(found.virtual_size, root_size)  # before qemu-img reads it
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
        if found.qemu_format == "raw" or (found.qemu_format in KEPT_FORMATS and not self.force_raw):
            return part, found.qemu_format, self.qemu.info(part, found.qemu_format)
        needed = self.qemu.measure_data(part, found.qemu_format)
        require_space(self.base_dir, needed, "the conversion to raw")
        cache = "none" if direct_io_supported(self.base_dir) else "writeback"
        cpu = convert_cpu_limit(self.convert_limits.cpu_seconds, part.stat().st_size)
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
