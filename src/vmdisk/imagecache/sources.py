"""Where image bytes come from: a local file, file://, or http(s):// with resume.

A source only yields bytes; deciding whether they are a safe image is inspect.py's job.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

from vmdisk._version import __version__
from vmdisk.credentials import strip_credentials
from vmdisk.errors import ImageFetchError, ImageNotFound, InvalidRequest
from vmdisk.fsutil import data_extents, reflink
from vmdisk.imagecache.netguard import AddressClass, Resolver, classify, system_resolver
from vmdisk.imagecache.records import Checksum
from vmdisk.imagecache.urls import (
    HttpOptions,
    TransientFetchError,
    check_redirect,
    check_url,
    redact_url,
    shutdown,
    unsplit_without_credentials,
)
from vmdisk.lazy import LazyModule

if TYPE_CHECKING:
    import requests
    import urllib3

    from vmdisk.imagecache import http
    from vmdisk.imagecache.http import HttpClient
else:  # imported by the first HTTP fetch, not by every command (vmdisk/lazy.py)
    requests, urllib3 = LazyModule("requests"), LazyModule("urllib3")
    http = LazyModule("vmdisk.imagecache.http")

__all__ = [
    "HttpSource",
    "ImageSource",
    "LocalFileSource",
    "Opened",
    "SourceFacts",
    "TransientFetchError",
    "check_redirect",
    "open_source",
    "redact_url",
]

CHUNK = 1024 * 1024
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(slots=True)
class Opened:
    """An open byte stream, positioned at the offset asked for, unless `restarted`.

    `restarted` means the source could not prove that what it has at that offset is the same
    image (see HttpSource): the stream starts at byte 0 and the reader must discard what it
    kept. `abort(error)` may be called from any thread (a watchdog): it unblocks a read in
    progress (`interrupt`, e.g. shutting the socket down) and the reader's next step through
    `chunks` raises `error`, also when the cut would otherwise look like a normal end.
    """

    chunks: Iterator[bytes]
    total: int | None  # the whole image's size, when the source knows it
    resumable: bool
    restarted: bool = False
    interrupt: Callable[[], None] | None = None
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.chunks = self._checked(self.chunks)

    def abort(self, error: BaseException) -> None:
        self.error = error
        if self.interrupt is not None:
            self.interrupt()

    def close(self) -> None:
        """Cut the stream now, from any thread (intake's watchdog and refusals mid-body); the
        caller knows why, so no error is attached."""
        if self.interrupt is not None:
            self.interrupt()

    def _checked(self, inner: Iterator[bytes]) -> Iterator[bytes]:
        try:
            for chunk in inner:
                if self.error is not None:
                    raise self.error
                yield chunk
        except Exception as exc:
            if self.error is not None and exc is not self.error:
                raise self.error from exc
            raise
        finally:
            close = getattr(inner, "close", None)
            if close is not None:
                close()
        if self.error is not None:
            raise self.error


@dataclass(frozen=True, slots=True)
class SourceFacts:
    """What a source says about its image before any byte is read; each fact is optional.

    Glance supplies all of them; a local file its size; a plain URL nothing (a HEAD request
    would cost a round trip for a number the download learns anyway).
    """

    image_id: str | None = None
    declared_format: str | None = None
    checksum: Checksum | None = None
    size: int | None = None
    location: str | None = None  # rbd://fsid/pool/image/snap when the bytes live in Ceph


class ImageSource(Protocol):
    """The seam intake reads through; tests give typed fakes."""

    @property
    def display(self) -> str: ...  # safe to print: no credentials

    def normalised(self) -> str: ...  # the default image id

    def resolve(self) -> SourceFacts: ...  # cheap: metadata only, never the bytes

    def open(self, offset: int = 0) -> Opened: ...


class LocalFileSource:
    def __init__(self, path: Path) -> None:
        self.path = Path(os.path.abspath(path))

    @property
    def display(self) -> str:
        return str(self.path)

    def normalised(self) -> str:
        return f"file://{self.path}"

    def resolve(self) -> SourceFacts:
        """The size from stat; a missing file is reported by open(), as before."""
        try:
            return SourceFacts(size=self.path.stat().st_size)
        except OSError:
            return SourceFacts()

    def open(self, offset: int = 0) -> Opened:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise ImageNotFound(f"image file not found: {self.path}", reason="not-found") from exc
        except IsADirectoryError as exc:
            raise InvalidRequest(f"{self.path} is a directory, not an image") from exc
        except PermissionError as exc:
            raise ImageFetchError(f"cannot read {self.path}: permission denied") from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise InvalidRequest(f"{self.path} is not a regular file", reason="not-a-file")
        return Opened(_read_extents(fd, offset, st.st_size), st.st_size, resumable=True)

    def clone_into(self, fd: int) -> bool:
        """Reflink this file into `fd` (a new `.part`) if the file system can; else False.

        The caller then reads the clone, not this file: it is private to the intake, so the
        bytes hashed and inspected are the bytes that become the base, whoever writes here.
        """
        try:
            src = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False  # open() reports it, with the usual typed error
        try:
            return stat.S_ISREG(os.fstat(src).st_mode) and reflink(src, fd)
        finally:
            os.close(src)


_ZEROS = bytes(CHUNK)


def _read_extents(fd: int, offset: int, size: int) -> Iterator[bytes]:
    """Read only the data extents; holes come back as zero chunks without a read.

    Reading a hole costs the kernel a zero-fill and a copy: for a mostly empty raw image
    that is most of the time a fetch takes.
    """
    try:
        pos = offset
        for data, hole in [*data_extents(fd, offset, size), (size, size)]:
            while pos < data:
                n = min(CHUNK, data - pos)
                yield _ZEROS if n == CHUNK else bytes(n)
                pos += n
            while pos < hole:
                chunk = os.pread(fd, min(CHUNK, hole - pos), pos)
                if not chunk:
                    return
                yield chunk
                pos += len(chunk)
    finally:
        os.close(fd)


def _is_internal(address: str) -> bool:
    """Any address a public server must not send us to (see netguard for the classes)."""
    return classify(address) is not AddressClass.PUBLIC


class HttpSource:
    """Streams an http(s) image through a guarded client; resumes only the same content.

    The first answer's validator (a strong ETag, else Last-Modified) and size are kept; a
    resume sends `Range` with `If-Range`, and its answer must be a 206 whose Content-Range
    starts at the offset asked for, with the same total and validator. Anything else (a 200,
    a range from elsewhere, a changed validator, or no validator to ask with) restarts the
    download from byte 0, flagged `Opened.restarted`, so a base is never spliced from two.
    """

    def __init__(
        self,
        url: str,
        *,
        options: HttpOptions | None = None,
        client: HttpClient | None = None,
        resolve: Resolver = system_resolver,
        headers: dict[str, str] | None = None,
        credentials: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.client = client or http.HttpClient(options, resolve=resolve)
        self.headers = headers or {}
        self.credentials = credentials or {}
        self._validator: str | None = None
        self._total: int | None = None

    @property
    def display(self) -> str:
        return redact_url(self.url)

    def normalised(self) -> str:
        """No user information, and secret query values masked: it is stored (the image id,
        the entry's source) and a new presigned URL of the same image must name the same entry."""
        return strip_credentials(unsplit_without_credentials(urlsplit(self.url)))

    def resolve(self) -> SourceFacts:
        return SourceFacts()

    def open(self, offset: int = 0) -> Opened:
        ranged = offset > 0 and self._validator is not None
        response = self._get(offset if ranged else 0)
        start = _range_start(response, offset if ranged else 0, self._total, self._validator)
        if start is None:  # a range we did not ask for, or other content: from byte 0
            response.close()
            response = self._get(0)
            start = _range_start(response, 0, None, None)
            if start is None:
                response.close()
                raise ImageFetchError(
                    f"{self.display} answered a plain GET with a partial range",
                    reason="bad-response",
                )
        if start == 0:
            self._validator = _validator(response)
            self._total = _total(response, 0)
        total = _total(response, start)
        resumable = response.headers.get("Accept-Ranges", "").lower() == "bytes" or start > 0
        conn = self.client.guard.last
        return Opened(
            self._stream(response),
            total,
            resumable,
            restarted=offset > 0 and start == 0,
            interrupt=lambda: _cut(response, conn),
        )

    def _get(self, offset: int) -> requests.Response:
        headers = {"Accept-Encoding": "identity", "User-Agent": f"vmdisk/{__version__}"}
        headers.update(self.headers)
        if offset and self._validator:
            headers["Range"] = f"bytes={offset}-"
            headers["If-Range"] = self._validator
        response = self.client.get(self.url, headers, credentials=self.credentials)
        _raise_for_status(response, self.url)
        return response

    def _stream(self, response: requests.Response) -> Iterator[bytes]:
        try:
            # decode_content=False: never inflate a Content-Encoding (a decompression bomb).
            yield from response.raw.stream(CHUNK, decode_content=False)
        except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
            raise TransientFetchError(f"download from {self.display} was cut: {exc}") from exc
        finally:
            response.close()


def _cut(response: requests.Response, conn: object) -> None:
    """Wake a read blocked in another thread: shutdown(2) the connection's socket, or, for a
    "Connection: close" answer (http.client hands the socket to the response and forgets it),
    a duplicate of the fd the response still reads."""
    sock = getattr(conn, "sock", None)
    if sock is not None:
        shutdown(sock)
        return
    with contextlib.suppress(OSError, AttributeError, ValueError):
        fd = response.raw._fp.fp.fileno()  # type: ignore[union-attr]
        with socket.socket(fileno=os.dup(fd)) as dup:
            shutdown(dup)


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def _validator(response: requests.Response) -> str | None:
    """What If-Range may carry: a strong ETag, else Last-Modified (weak ETags never match)."""
    etag = response.headers.get("ETag", "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified") or None


def _total(response: requests.Response, start: int) -> int | None:
    found = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if response.status_code == 206 and found:
        return int(found.group(3))
    length = response.headers.get("Content-Length", "")
    return int(length) + start if length.isdigit() else None


def _range_start(
    response: requests.Response, asked: int, total: int | None, validator: str | None
) -> int | None:
    """Where this answer's body starts in the image, or None when it cannot be trusted.

    A 200 is the whole image from 0. A 206 must start where we asked, end at its total, agree
    with the first answer's total and validator, and carry a Content-Length that fits.
    """
    if response.status_code != 206:
        return 0
    found = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if found is None:
        return None
    first, last, size = (int(g) for g in found.groups())
    length = response.headers.get("Content-Length", "")
    if first != asked or last != size - 1 or (total is not None and size != total):
        return None
    if length and (not length.isdigit() or int(length) != last - first + 1):
        return None
    if asked and validator is not None and _validator(response) not in (None, validator):
        return None
    return first


def _raise_for_status(response: requests.Response, url: str) -> None:
    status = response.status_code
    if status in (200, 206):
        return
    response.close()
    shown = redact_url(url)
    if status == 404:
        raise ImageNotFound(f"image not found: {shown} (HTTP 404)", reason="not-found")
    if status in (401, 403):
        raise ImageFetchError(f"access denied to {shown} (HTTP {status})", reason="forbidden")
    raise ImageFetchError(f"cannot fetch {shown}: HTTP {status}", reason=f"http-{status}")


def open_source(
    text: str,
    *,
    options: HttpOptions | None = None,
    resolve: Resolver = system_resolver,
    classify_address: Callable[[str], AddressClass] = classify,
) -> ImageSource:
    """Turn what the user typed into a source; refuse schemes we never read.

    A malformed http(s) URL (bad port, bad IPv6 literal, no host) is an InvalidRequest with
    reason "bad-url" (exit 2), its credentials redacted.
    """
    found = _SCHEME.match(text)
    scheme = found.group(1).lower() if found else ""
    if scheme in ("http", "https"):
        check_url(text)
        client = http.HttpClient(options, resolve=resolve, classify_address=classify_address)
        return HttpSource(text, client=client)
    if scheme == "file":
        try:
            parts = urlsplit(text)
        except ValueError:
            parts = None
        if parts is None or parts.netloc not in ("", "localhost"):
            raise InvalidRequest(
                f"file: URLs must name a local path: {redact_url(text)}", reason="bad-url"
            )
        return LocalFileSource(Path(unquote(parts.path)))
    if len(scheme) > 1:  # "C:" style paths do not exist here; anything else is a URL
        raise InvalidRequest(
            f"unsupported image source scheme {scheme!r}",
            hint="use a local path, file://, http:// or https://",
            reason="bad-scheme",
        )
    if not text:
        raise InvalidRequest("an image source is required")
    return LocalFileSource(Path(text))
