"""Where image bytes come from: a local file, file://, or http(s):// with resume.

A source only yields bytes; deciding whether they are a safe image is inspect.py's job.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from vmdisk._version import __version__
from vmdisk.errors import ImageFetchError, ImageNotFound, InvalidRequest
from vmdisk.fsutil import data_extents, reflink
from vmdisk.imagecache.records import Checksum
from vmdisk.lazy import LazyModule

if TYPE_CHECKING:
    import requests
    import urllib3
else:  # imported by the first HTTP fetch, not by every command (vmdisk/lazy.py)
    requests, urllib3 = LazyModule("requests"), LazyModule("urllib3")

CHUNK = 1024 * 1024
Resolver = Callable[[str], list[str]]


@dataclass(slots=True)
class Opened:
    """An open byte stream, positioned at the offset asked for."""

    chunks: Iterator[bytes]
    total: int | None  # the whole image's size, when the source knows it
    resumable: bool


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


class TransientFetchError(Exception):
    """A cut connection or stall: the caller may resume from where it got to."""


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


def _system_resolver(host: str) -> list[str]:
    try:
        return [str(info[4][0]) for info in socket.getaddrinfo(host, None)]
    except socket.gaierror:
        return []


def _is_internal(address: str) -> bool:
    """Loopback, link-local (169.254.169.254 is the metadata service), or unspecified."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"****@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_redirect(source: str, target: str, resolve: Resolver = _system_resolver) -> None:
    """Refuse a redirect that leaves http(s), downgrades https, or turns inward.

    A server on the internet must not be able to point us at the host itself or at the
    metadata service (SSRF); a loopback server (tests, local mirrors) may.
    """
    src, dst = urlsplit(source), urlsplit(target)
    if dst.scheme not in ("http", "https"):
        raise ImageFetchError(
            f"refused redirect to a {dst.scheme or 'relative'}: URL ({redact_url(target)})",
            reason="redirect-refused",
        )
    if src.scheme == "https" and dst.scheme == "http":
        raise ImageFetchError(
            f"refused redirect from https to http ({redact_url(target)})", reason="redirect-refused"
        )
    src_host, dst_host = src.hostname or "", dst.hostname or ""
    if all(_is_internal(a) for a in resolve(src_host) or [src_host]):
        return
    if any(_is_internal(a) for a in resolve(dst_host) or [dst_host]):
        raise ImageFetchError(
            f"refused redirect from {src_host} to internal address {dst_host}",
            reason="redirect-refused",
        )


class HttpSource:
    """Streams an http(s) image; follows at most `max_redirects`, each checked."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 10.0,
        stall_timeout: float = 30.0,
        max_redirects: int = 5,
        resolve: Resolver = _system_resolver,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self.max_redirects = max_redirects
        self.resolver = resolve
        self.headers = headers or {}
        self.session = requests.Session()
        self.session.trust_env = False  # no netrc or proxy surprises in a host tool

    @property
    def display(self) -> str:
        return redact_url(self.url)

    def normalised(self) -> str:
        parts = urlsplit(self.url)
        host = (parts.hostname or "").lower()
        default = {"http": 80, "https": 443}.get(parts.scheme.lower())
        port = f":{parts.port}" if parts.port and parts.port != default else ""
        return urlunsplit((parts.scheme.lower(), host + port, parts.path or "/", parts.query, ""))

    def resolve(self) -> SourceFacts:
        return SourceFacts()

    def open(self, offset: int = 0) -> Opened:
        headers = {"Accept-Encoding": "identity", "User-Agent": f"vmdisk/{__version__}"}
        headers.update(self.headers)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = self._follow(headers)
        if offset and response.status_code != 206:
            response.close()
            raise TransientFetchError("server does not support resuming (no 206 answer)")
        length = response.headers.get("Content-Length")
        total = int(length) + offset if length and length.isdigit() else None
        resumable = response.headers.get("Accept-Ranges", "").lower() == "bytes" or offset > 0
        return Opened(self._stream(response), total, resumable)

    def _follow(self, headers: dict[str, str]) -> requests.Response:
        url = self.url
        for _ in range(self.max_redirects + 1):
            try:
                response = self.session.get(
                    url,
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=(self.connect_timeout, self.stall_timeout),
                )
            except requests.exceptions.ConnectionError as exc:
                raise ImageFetchError(
                    f"cannot connect to {redact_url(url)}", reason="connection-failed"
                ) from exc
            except requests.exceptions.Timeout as exc:
                raise TransientFetchError(f"timed out talking to {redact_url(url)}") from exc
            except requests.exceptions.RequestException as exc:
                raise ImageFetchError(f"cannot fetch {redact_url(url)}: {exc}") from exc
            if response.is_redirect:
                target = urljoin(url, response.headers.get("Location", ""))
                response.close()
                check_redirect(url, target, self.resolver)
                url = target
                headers.pop("Authorization", None)
                continue
            _raise_for_status(response, url)
            return response
        raise ImageFetchError(
            f"more than {self.max_redirects} redirects from {self.display}",
            reason="redirect-refused",
        )

    def _stream(self, response: requests.Response) -> Iterator[bytes]:
        try:
            # decode_content=False: never inflate a Content-Encoding (a decompression bomb).
            yield from response.raw.stream(CHUNK, decode_content=False)
        except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
            raise TransientFetchError(f"download from {self.display} was cut: {exc}") from exc
        finally:
            response.close()


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
    text: str, *, connect_timeout: float = 10.0, stall_timeout: float = 30.0
) -> ImageSource:
    """Turn what the user typed into a source; refuse schemes we never read."""
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise InvalidRequest(f"not a valid URL: {redact_url(text)}")
        return HttpSource(text, connect_timeout=connect_timeout, stall_timeout=stall_timeout)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidRequest(f"file: URLs must name a local path: {text}")
        return LocalFileSource(Path(unquote(parts.path)))
    if scheme and len(scheme) > 1:  # "C:" style paths do not exist here; anything else is a URL
        raise InvalidRequest(
            f"unsupported image source scheme {scheme!r}",
            hint="use a local path, file://, http:// or https://",
            reason="bad-scheme",
        )
    if not text:
        raise InvalidRequest("an image source is required")
    return LocalFileSource(Path(text))
