"""Content digests of cached bases that cost their data, not their size.

A plain sha256 of a 1 TiB raw base with 1 GiB of data hashes 1023 GiB of zeros: about a
second per GiB of holes, on every fetch and every `cache verify`. The digest here is sha256 over
1 MiB leaves of the file; a leaf that is all zeros is never hashed (its digest is a constant),
and a run of such leaves is recorded as one count, so holes cost nothing and a 64 TiB sparse
base digests as fast as its data reads. The value depends only on the bytes and the length,
never on which parts happen to be allocated, so a stream (the download as it is written) and a
file read back by extents give the same answer.

    sha256-1m:HEX = sha256("vmdisk-sha256-1m" || size as 8 bytes big-endian || items)
    items: b"D" || sha256(leaf) for a leaf with any non-zero byte (the last may be short),
           b"Z" || count as 8 bytes for each maximal run of all-zero leaves

Records written before this existed hold a plain sha256 (64 hex digits, no tag);
`matches` checks those the old way, so `cache verify` still re-checks every base. A checksum
a user supplies is never this digest: intake computes that algorithm over every byte.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from vmdisk.fsutil import data_extents

TAG = "sha256-1m:"
LEAF = 1024 * 1024
_ZERO = bytes(LEAF)
_DOMAIN = b"vmdisk-sha256-1m"


class TreeDigest:
    """The digest of a byte stream fed in order; zero leaves are recognised by comparison."""

    def __init__(self) -> None:
        self.size = 0
        self._items = hashlib.sha256()
        self._zero_run = 0
        self._buf = bytearray()

    def update(self, chunk: bytes) -> None:
        if not self._buf and len(chunk) == LEAF:  # the usual case: whole 1 MiB chunks
            self._leaf(chunk)
            return
        pos = 0
        if self._buf:
            pos = min(LEAF - len(self._buf), len(chunk))
            self._buf += chunk[:pos]
            if len(self._buf) == LEAF:
                self._leaf(bytes(self._buf))
                self._buf.clear()
        while len(chunk) - pos >= LEAF:
            self._leaf(chunk[pos : pos + LEAF])
            pos += LEAF
        if pos < len(chunk):
            self._buf += chunk[pos:]

    def zeros(self, n: int) -> None:
        """n zero bytes, known to be zero without reading them (a hole)."""
        if self._buf:
            take = min(LEAF - len(self._buf), n)
            self.update(_ZERO[:take])
            n -= take
        whole, rest = divmod(n, LEAF)
        self._zero_run += whole
        self.size += whole * LEAF
        if rest:
            self.update(_ZERO[:rest])

    def leaf_digest(self, digest: bytes | None, length: int) -> None:
        """A whole leaf already hashed elsewhere (None: it is all zeros)."""
        self.size += length
        if digest is None:
            self._zero_run += 1
        else:
            self._data(digest)

    def _leaf(self, leaf: bytes) -> None:
        self.leaf_digest(_hash_leaf(leaf), len(leaf))

    def _data(self, digest: bytes) -> None:
        if self._zero_run:
            self._items.update(b"Z" + self._zero_run.to_bytes(8, "big"))
            self._zero_run = 0
        self._items.update(b"D" + digest)

    def hexdigest(self) -> str:
        """The tagged digest; the object may not be fed afterwards."""
        if self._buf:
            self._leaf(bytes(self._buf))
            self._buf.clear()
        if self._zero_run:
            self._items.update(b"Z" + self._zero_run.to_bytes(8, "big"))
            self._zero_run = 0
        final = hashlib.sha256(_DOMAIN + self.size.to_bytes(8, "big"))
        final.update(self._items.digest())
        return TAG + final.hexdigest()


def _hash_leaf(leaf: bytes) -> bytes | None:
    """sha256 of a leaf, or None when it is all zeros (a memcmp, ~30x cheaper than hashing).

    bytes, not memoryview: comparing a memoryview is element by element, 300x slower.
    """
    if leaf == _ZERO[: len(leaf)]:
        return None
    return hashlib.sha256(leaf).digest()


def file_digest(path: Path) -> str:
    """The digest of a file, reading only the leaves that touch a data extent.

    Leaves are read and hashed on two threads (pread and sha256 both release the GIL), in
    order, a bounded number ahead, so memory stays at a few MiB whatever the file's size.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        tree = TreeDigest()
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending: list[tuple[Future[bytes | None], int]] = []
            for start, length, data in _leaves(fd, size):
                if not data:
                    _drain(tree, pending)
                    tree.zeros(length)
                    continue
                pending.append((pool.submit(_read_leaf, fd, start, length), length))
                if len(pending) >= 8:
                    head, pending[:] = pending[:4], pending[4:]
                    _drain(tree, head)
            _drain(tree, pending)
        return tree.hexdigest()
    finally:
        os.close(fd)


def _drain(tree: TreeDigest, pending: list[tuple[Future[bytes | None], int]]) -> None:
    for future, length in pending:
        tree.leaf_digest(future.result(), length)
    pending.clear()


def _read_leaf(fd: int, start: int, length: int) -> bytes | None:
    data = os.pread(fd, length, start)
    if len(data) != length:
        raise OSError(f"short read at {start}: the file changed while it was hashed")
    return _hash_leaf(data)


def _leaves(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(start, length, touches data) for runs of hole leaves and for each data leaf."""
    pos = 0
    for data, hole in data_extents(fd, 0, size):
        first = data // LEAF * LEAF
        if first > pos:
            yield pos, first - pos, False
            pos = first
        while pos < hole:
            length = min(LEAF, size - pos)
            yield pos, length, True
            pos += length
    if pos < size:
        yield pos, size - pos, False


def plain_sha256(path: Path) -> str:
    """sha256 of every byte (holes hashed as zeros): for records older than TAG."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        for data, hole in [*data_extents(fd, 0, size), (size, size)]:
            for _ in range(pos, data, LEAF):
                digest.update(_ZERO[: min(LEAF, data - _)])
            pos = data
            while pos < hole:
                block = os.pread(fd, min(LEAF, hole - pos), pos)
                if not block:
                    break
                digest.update(block)
                pos += len(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


def matches(path: Path, recorded: str) -> tuple[bool, str]:
    """Whether the file still has the recorded digest (either kind), and what it has now."""
    actual = file_digest(path) if recorded.startswith(TAG) else plain_sha256(path)
    return actual == recorded, actual
