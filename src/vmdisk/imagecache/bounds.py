"""How much a download may be, and how slowly it may come: checked as the bytes arrive.

`Bounds` stops a body at the limit that applies (declared size, Content-Length, the virtual
size limits and the flavor's root disk as soon as the header says what the image is, free
space); `Watchdog` abandons a body slower than a minimum rate over a window, or longer than
an overall deadline, by aborting the read it is blocked in.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from vmdisk.errors import ImageFetchError, ImageTooLarge, InsufficientSpace, VmdiskError
from vmdisk.fsutil import free_bytes
from vmdisk.imagecache.pins import flavor_too_small
from vmdisk.imagecache.sources import Opened
from vmdisk.units import MiB, format_size

#: A non-raw image is its virtual size plus metadata; more than this is not an image we take.
METADATA_SLACK = 64 * MiB


@dataclass(frozen=True, slots=True)
class DownloadPolicy:
    """[image_cache] download_min_rate / download_rate_window / download_deadline."""

    min_rate: int = 16 * 1024  # bytes per second, averaged over rate_window
    rate_window: float = 60.0
    deadline: float = 6 * 3600.0


def too_large(size: int, limit: int, what: str = "virtual size") -> ImageTooLarge:
    return ImageTooLarge(
        f"{what} {format_size(size)} is over the limit of {format_size(limit)}",
        reason="too-large",
        hint="raise --max-size (or [image_cache] max_virtual_size) if this is expected",
    )


class Bounds:
    """One fetch's byte limits; `after_chunk` raises as soon as one is crossed."""

    def __init__(
        self,
        base_dir: Path,
        what: str,
        *,
        declared_size: int | None,
        virtual_limit: int | None,
        root_size: int | None,
        raw_only: bool,
    ) -> None:
        self.base_dir = base_dir
        self.what = what
        self.declared_size = declared_size
        self.virtual_limit = virtual_limit
        self.root_size = root_size
        self.raw_only = raw_only  # kernels and ramdisks: bytes are the size from the start
        self.free = free_bytes(base_dir)
        self.total: int | None = None
        self.byte_cap: int | None = None
        self.decided = False

    def decide(self, fmt: str, virtual_size: int | None) -> None:
        """The header is in: refuse by its virtual size now, and cap the bytes to come."""
        self.decided = True
        if fmt == "raw" or virtual_size is None:
            return
        if self.virtual_limit is not None and virtual_size > self.virtual_limit:
            raise too_large(virtual_size, self.virtual_limit)
        if self.root_size is not None and virtual_size > self.root_size:
            raise flavor_too_small(virtual_size, self.root_size)
        self.byte_cap = virtual_size + virtual_size // 4 + METADATA_SLACK

    def after_chunk(self, offset: int) -> None:
        for limit, source in (
            (self.declared_size, "the declared size"),
            (self.total, "its Content-Length"),
        ):
            if limit is not None and offset > limit:
                raise ImageFetchError(
                    f"{self.what} sent more than {source} of {limit} bytes",
                    reason="oversized-download",
                )
        if self.byte_cap is not None and offset > self.byte_cap:
            raise too_large(offset, self.byte_cap, "the download")

    def before_chunk(self, offset: int, length: int, fd: int) -> None:
        """Refuse a chunk that would pass a raw limit or might not fit, before writing it."""
        if self.raw_only or (self.decided and self.byte_cap is None):
            self._raw_limits(offset + length)
        allocated = os.fstat(fd).st_blocks * 512
        if allocated + length > self.free:
            raise InsufficientSpace(
                f"not enough space in {self.base_dir} for {self.what}: needs more than "
                f"{format_size(allocated + length)}, {format_size(self.free)} was free",
                reason="insufficient-space",
                hint="free some space (vmdisk cache prune) or point instances_path elsewhere",
            )

    def _raw_limits(self, offset: int) -> None:
        """A raw image's size is its byte count: stop the moment it passes a limit."""
        if self.virtual_limit is not None and offset > self.virtual_limit:
            raise ImageTooLarge(
                f"the raw download passed the limit of {format_size(self.virtual_limit)} "
                "(a raw image's size is its byte count); stopped there",
                reason="too-large",
                hint="raise --max-size (or [image_cache] max_virtual_size) if this is expected",
            )
        if self.root_size is not None and offset > self.root_size and not self.raw_only:
            raise flavor_too_small(offset, self.root_size, partial=True)


class Watchdog:
    """A thread that aborts the current read when the body is too slow or too long."""

    def __init__(self, policy: DownloadPolicy, what: str) -> None:
        self.policy = policy
        self.what = what
        self.offset = 0
        self.tripped: VmdiskError | None = None
        self._opened: Opened | None = None
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True, name="download-watchdog")
        self._thread.start()

    def watch(self, opened: Opened) -> None:
        self._opened = opened
        if self.tripped is not None:
            opened.close()

    def check(self) -> None:
        """Raise the watchdog's verdict, if it gave one (called when a read fails or ends)."""
        if self.tripped is not None:
            raise self.tripped

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        p = self.policy
        tick = max(0.05, min(1.0, p.rate_window / 10))
        samples: deque[tuple[float, int]] = deque()
        while not self._stop.wait(tick):
            now = time.monotonic()
            samples.append((now, self.offset))
            while len(samples) > 1 and samples[1][0] <= now - p.rate_window:
                samples.popleft()
            if now - self._start > p.deadline:
                self._trip(
                    f"{self.what} did not finish within download_deadline ({p.deadline:.0f} s)",
                    "download-deadline",
                )
                return
            first_t, first_off = samples[0]
            if now - first_t >= p.rate_window and (self.offset - first_off) < p.min_rate * (
                now - first_t
            ):
                rate = (self.offset - first_off) / (now - first_t)
                self._trip(
                    f"{self.what} is too slow: {rate:.0f} bytes/s over the last "
                    f"{now - first_t:.0f} s, download_min_rate is {p.min_rate} bytes/s",
                    "download-too-slow",
                )
                return

    def _trip(self, message: str, reason: str) -> None:
        self.tripped = ImageFetchError(
            message,
            reason=reason,
            hint="use a closer mirror, or raise [image_cache] download_min_rate/download_deadline",
        )
        if self._opened is not None:
            self._opened.close()
