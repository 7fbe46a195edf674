"""Compressed images (`.xz`, `.gz`, `.zst`): decompressed while they stream, never to a file.

Fedora, Arch and Debian ship raw images this way. The wrapper sits between any source and
the intake, so the intake hashes, inspects and writes the *decompressed* bytes: the declared
format is the format inside, while `--checksum` is of the compressed file (what distributions
publish), checked here as it streams. The inspector refuses a compressed stream inside a
compressed stream as it always does. Output is capped: a decompression bomb stops at the
limit (the image size limits plus slack for qcow2 metadata) with ImageTooLarge, having
written only sparse zeros.

A cut download is resumed here, at the compressed offset, into the same decompressor. Should
the intake itself reopen at an offset, the stream is read again from the start and what was
already written is skipped (a compressed stream cannot be entered in the middle).
"""

from __future__ import annotations

import hashlib
import lzma
import zlib
from collections.abc import Iterator

import zstandard

from vmdisk.errors import ChecksumMismatch, ImageTooLarge, UnsafeImage
from vmdisk.imagecache.records import Checksum
from vmdisk.imagecache.sources import (
    CHUNK,
    ImageSource,
    Opened,
    SourceFacts,
    TransientFetchError,
)
from vmdisk.units import MiB

SUFFIXES = {".xz": "xz", ".gz": "gzip", ".zst": "zstd"}
#: A qcow2/vmdk file can be a little larger than its virtual size (tables, headers).
SLACK_MIN = 64 * MiB


def output_cap(limit: int) -> int:
    """Decompressed bytes allowed for an image of at most `limit` virtual bytes."""
    return limit + limit // 8 + SLACK_MIN


ZSTD_PIECE = 4096
MAX_RESUMES = 5


def compression_of(text: str) -> str | None:
    """The codec a source's name promises, from its path (query and fragment ignored)."""
    path = text.split("?", 1)[0].split("#", 1)[0].lower()
    return next((codec for suffix, codec in SUFFIXES.items() if path.endswith(suffix)), None)


class CompressedSource:
    """An ImageSource that yields the decompressed bytes of another source."""

    def __init__(
        self,
        inner: ImageSource,
        codec: str,
        limit: int | None = None,
        checksum: Checksum | None = None,
    ) -> None:
        """`checksum` is of the compressed file, as distributions publish it."""
        if codec not in SUFFIXES.values():
            raise ValueError(f"unknown compression {codec!r}")
        self.inner = inner
        self.codec = codec
        self.limit = limit  # decompressed bytes; None: no cap (the caller sets one)
        self.checksum = checksum

    @property
    def display(self) -> str:
        return self.inner.display

    def normalised(self) -> str:
        return self.inner.normalised()

    def resolve(self) -> SourceFacts:
        """The inner source's facts, without its size: that is of the compressed bytes."""
        facts = self.inner.resolve()
        return SourceFacts(facts.image_id, facts.declared_format, None, None, None)

    def open(self, offset: int = 0) -> Opened:
        """Always from the first decompressed byte: a new read of the compressed file may not
        be the same file (no validator to resume against), so the intake starts again
        (restarted) rather than splice the old output to the new."""
        chunks = self._decompress(_verified(self._compressed(), self.checksum))
        return Opened(chunks, None, resumable=True, restarted=offset > 0)

    def _compressed(self) -> Iterator[bytes]:
        """The inner bytes; a cut is resumed at the compressed offset reached, feeding the
        same decompressor (its state is in memory), so nothing is read twice. A source that
        can only start again from 0 is followed when its first `pos` bytes hash the same as
        those already fed (then the whole is one file); otherwise the intake starts over."""
        opened = self.inner.open(0)
        pos = resumes = 0
        seen = hashlib.sha256()
        while True:
            try:
                for chunk in opened.chunks:
                    pos += len(chunk)
                    seen.update(chunk)
                    yield chunk
                if opened.total is None or pos >= opened.total:
                    return
                raise TransientFetchError(f"{self.display} ended at {pos} of {opened.total}")
            except TransientFetchError:
                if resumes >= MAX_RESUMES or not opened.resumable:
                    raise
                resumes += 1
                opened = self.inner.open(pos)
                if opened.restarted:
                    rest = _after_same_prefix(opened.chunks, pos, seen.copy())
                    if rest is None:  # other bytes: this decompressor's state is stale
                        opened.close()
                        raise
                    for chunk in rest:
                        pos += len(chunk)
                        seen.update(chunk)
                        yield chunk
                    if opened.total is None or pos >= opened.total:
                        return
                    raise TransientFetchError(
                        f"{self.display} ended at {pos} of {opened.total}"
                    ) from None

    def _decompress(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        produced = 0
        for piece in _coalesce(_inflate(self.codec, chunks)):
            produced += len(piece)
            if self.limit is not None and produced > self.limit:
                raise ImageTooLarge(
                    f"{self.display} decompresses to more than {self.limit} bytes",
                    reason="too-large",
                )
            yield piece


def _inflate(codec: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Decompressed pieces of at most CHUNK bytes, whatever the ratio (bombs stay bounded)."""
    inflate = {"xz": _inflate_xz, "gzip": _inflate_gzip, "zstd": _inflate_zstd}[codec]
    try:
        yield from inflate(chunks)
    except (lzma.LZMAError, zlib.error, zstandard.ZstdError, EOFError) as exc:
        raise UnsafeImage(f"not a valid {codec} stream: {exc}", reason="corrupt") from exc


def _truncated(codec: str) -> UnsafeImage:
    return UnsafeImage(f"the {codec} stream ends before its end marker", reason="corrupt")


def _inflate_xz(chunks: Iterator[bytes]) -> Iterator[bytes]:
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    for data in chunks:
        while data or not d.needs_input:
            if d.eof:  # concatenated streams (xz -T, pixz), maybe with zero padding between
                data = d.unused_data + data
                if not data.strip(b"\0"):
                    break
                d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            out = d.decompress(data, CHUNK)
            data = b""
            if out:
                yield out
    if not d.eof:
        raise _truncated("xz")


def _inflate_gzip(chunks: Iterator[bytes]) -> Iterator[bytes]:
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    for data in chunks:
        pending = False  # output held back by the CHUNK cap, with no input left
        while data or pending:
            if d.eof:  # a multi-member gzip file, or zero padding after the last member
                if not data.strip(b"\0"):
                    break
                d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            out = d.decompress(data, CHUNK)
            if out:
                yield out
            data = d.unused_data if d.eof else d.unconsumed_tail
            pending = len(out) == CHUNK and not d.eof
    if not d.eof:
        raise _truncated("gzip")


def _inflate_zstd(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """zstd has no output cap per call, so input goes in ZSTD_PIECE slices: one call's output
    is bounded by the format's best ratio (an RLE block: ~32768:1), checked by the caller."""
    dctx = zstandard.ZstdDecompressor()
    d = dctx.decompressobj()
    for data in chunks:
        view = memoryview(data)
        while view:
            if d.eof:  # concatenated frames (zstd -T, or cat a.zst b.zst)
                rest = d.unused_data + bytes(view)
                if not rest.strip(b"\0"):
                    break
                d, view = dctx.decompressobj(), memoryview(rest)
            out = d.decompress(view[:ZSTD_PIECE])
            view = view[ZSTD_PIECE:]
            for pos in range(0, len(out), CHUNK):
                yield out[pos : pos + CHUNK]
    if not d.eof:
        raise _truncated("zstd")


def _verified(chunks: Iterator[bytes], checksum: Checksum | None) -> Iterator[bytes]:
    """The compressed bytes, hashed as they pass; a mismatch is raised at their end, before
    the intake can rename anything into place."""
    if checksum is None:
        yield from chunks
        return
    digest = hashlib.new(checksum.algorithm)
    for chunk in chunks:
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != checksum.hexdigest:
        raise ChecksumMismatch(
            f"{checksum.algorithm} of the compressed download is {digest.hexdigest()}, "
            f"expected {checksum.hexdigest}",
            reason="checksum-mismatch",
        )


def _coalesce(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """Gather small pieces into CHUNK-sized ones: the intake's work is per chunk."""
    buf = bytearray()
    for piece in pieces:
        buf += piece
        if len(buf) >= CHUNK:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def _after_same_prefix(
    chunks: Iterator[bytes], length: int, expected: hashlib._Hash
) -> Iterator[bytes] | None:
    """The stream after its first `length` bytes, if they hash to `expected`; else None."""
    digest = hashlib.sha256()
    head: list[bytes] = []
    for chunk in chunks:
        take = min(len(chunk), length)
        digest.update(chunk[:take])
        length -= take
        if chunk[take:]:
            head.append(chunk[take:])
        if length == 0:
            break
    if length or digest.digest() != expected.digest():
        return None

    def rest() -> Iterator[bytes]:
        yield from head
        yield from chunks

    return rest()
