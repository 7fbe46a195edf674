"""URLs and redirect rules without an HTTP stack: what every command may need (messages,
image ids, checks of what a user typed) at the price of the standard library only.

imagecache/http.py, which imports requests and urllib3, re-exports these; code that only parses,
shows or checks URLs imports them from here so short commands do not load requests.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

from vmdisk.credentials import strip_credentials
from vmdisk.errors import ImageFetchError, InvalidRequest
from vmdisk.imagecache.netguard import (
    AddressClass,
    Resolver,
    classify,
    host_class,
    parse_address,
    refused_addresses,
    system_resolver,
)

Classifier = Callable[[str], AddressClass]


class TransientFetchError(Exception):
    """A cut connection or stall: the caller may resume from where it got to."""


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """What the client is told by the settings ([image_cache] download_*, [glance] cafile)."""

    connect_timeout: float = 10.0
    stall_timeout: float = 30.0  # no byte for this long: the read is cut (then resumed)
    header_timeout: float = 60.0  # status line and headers complete within this, overall
    max_redirects: int = 5
    trust_env: bool = False  # honour HTTP(S)_PROXY, NO_PROXY, .netrc, REQUESTS_CA_BUNDLE
    ca_file: str | None = None  # CA bundle for https; None is the system's (certifi)


# --- URLs -----------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL without its user:password or secret-looking query values (signed URLs, tokens);
    never raises, whatever the text is."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc = rest[:end]
    if "@" in netloc:
        url = f"{scheme}://****@{netloc.rpartition('@')[2]}{rest[end:]}"
    try:
        return strip_credentials(url)
    except ValueError:
        return url


def parse_http_url(text: str) -> SplitResult:
    """An http(s) URL whose host and port are well formed; ValueError saying what is wrong."""
    try:
        parts = urlsplit(text)
        host, _ = parts.hostname, parts.port  # both raise ValueError on a malformed netloc
    except ValueError as exc:
        text_of = str(exc)
        if "Port" in text_of:  # urllib quotes the port text after " as ": leave it out
            raise ValueError(text_of.split(" as ", 1)[0].lower()) from None
        raise ValueError("bad IPv6 literal") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"unsupported scheme {parts.scheme or 'none'!r}")
    if not host:
        raise ValueError("no host")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in text):
        raise ValueError("whitespace or control characters")
    if "[" in parts.netloc and parse_address(host) is None:
        raise ValueError("bad IPv6 literal")
    return parts


def check_url(text: str) -> SplitResult:
    """parse_http_url for what a user typed: InvalidRequest (exit 2) naming the fault."""
    try:
        return parse_http_url(text)
    except ValueError as exc:
        raise InvalidRequest(
            f"not a valid URL ({exc}): {redact_url(text)}",
            hint="use http(s)://HOST[:PORT]/PATH, IPv6 addresses in brackets",
            reason="bad-url",
        ) from None


def origin_of(parts: SplitResult) -> tuple[str, str, int]:
    """(scheme, host, port): credentials are sent only where this stays the same."""
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def check_redirect(
    source: str,
    target: str,
    resolve: Resolver = system_resolver,
    *,
    origin: AddressClass | None = None,
    classify_address: Classifier = classify,
) -> None:
    """Refuse a redirect that leaves http(s), downgrades https, or turns inward.

    `origin` is the class of the server that sent the redirect (from its connection); without
    it the source's name is classified. This is the early check on names; the connection
    check in `_Guard.connect` is the one DNS cannot fool.
    """
    src = urlsplit(source)
    try:
        dst = parse_http_url(target)
    except ValueError as exc:
        raise ImageFetchError(
            f"refused redirect to {redact_url(target)}: {exc}", reason="redirect-refused"
        ) from None
    if src.scheme == "https" and dst.scheme == "http":
        raise ImageFetchError(
            f"refused redirect from https to http ({redact_url(target)})", reason="redirect-refused"
        )
    src_host, dst_host = shown_host(src.hostname or ""), shown_host(dst.hostname or "")
    if origin is None:
        origin = host_class(src.hostname or "", resolve, classify_address)
    refused = refused_addresses(origin, dst.hostname or "", resolve, classify_address)
    if refused:
        raise ImageFetchError(
            f"refused redirect from {src_host} to {dst_host}: "
            f"{refused[0]} is a {classify_address(refused[0])} address",
            reason="redirect-refused",
        )


def shown_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def shutdown(sock: socket.socket | None) -> None:
    """Unblock a read on `sock` in another thread (close() alone would not)."""
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the fd's, under an SSLSocket too


def unsplit_without_credentials(parts: SplitResult) -> str:
    """scheme://host[:port]/path?query, userinfo and fragment dropped (the default image id)."""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(scheme)
    port = f":{parts.port}" if parts.port and parts.port != default else ""
    return urlunsplit((scheme, host + port, parts.path or "/", parts.query, ""))
