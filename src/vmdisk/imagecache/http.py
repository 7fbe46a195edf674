"""The one HTTP client of downloads, Glance and OCI registries: every connection checked, every hop.

`HttpClient.get` follows redirects itself, checking each target (scheme, https downgrade, the
address class of the name) and sending credentials only to the origin they were given for. The
connections under it are pinned: the name is resolved once, every address is checked by
netguard's rule, the socket connects to a checked address and its peer is checked again, so a
DNS answer that changes between check and connect (rebinding) gains nothing. A server must
finish its headers within `header_timeout`, however slowly it drips them.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from vmdisk.errors import ImageFetchError
from vmdisk.imagecache.netguard import (
    AddressClass,
    Resolver,
    classify,
    hop_allowed,
    parse_address,
    system_resolver,
)
from vmdisk.imagecache.urls import (
    Classifier,
    HttpOptions,
    TransientFetchError,
    check_redirect,
    origin_of,
    redact_url,
    shown_host,
    shutdown,
)

# --- connections ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Guard:
    """The address rule for one client's connections, and what the last request went to."""

    resolve: Resolver
    classify: Classifier
    header_timeout: float
    origin: AddressClass | None = None  # the class the user's URL first connected to
    allowed_from: AddressClass | None = None  # the class of the hop in progress came from
    redirect: bool = False  # the hop in progress is a redirect (else: the user's URL)
    last: Any = None  # the connection that carried the latest request
    connect_timeout: float = 10.0  # when urllib3 hands no number down

    def refuse(self, host: str, address: str) -> ImageFetchError:
        cls = self.classify(address)
        came = self.allowed_from or AddressClass.PUBLIC
        return ImageFetchError(
            f"refused to connect to {shown_host(host)} ({address} is a {cls} address, "
            f"reached from a {came} one)",
            reason="redirect-refused" if self.redirect else "address-refused",
        )

    def connect(
        self, host: str, port: int, timeout: float | None, options: Any
    ) -> tuple[socket.socket, AddressClass]:
        """A socket to a checked address of `host`, and that address's class."""
        literal = parse_address(host)
        addresses = [str(literal)] if literal is not None else self.resolve(host)
        if not addresses:
            raise ImageFetchError(f"cannot resolve host {host}", reason="connection-failed")
        for address in addresses:
            if not hop_allowed(self.allowed_from, self.classify(address)):
                raise self.refuse(host, address)
        error: OSError = OSError(f"no address of {host} answered")
        for address in addresses:
            try:
                wait = timeout if isinstance(timeout, int | float) else self.connect_timeout
                sock = _dial(address, port, wait, options)
            except OSError as exc:
                error = exc
                continue
            peer = str(sock.getpeername()[0])
            cls = self.classify(peer)
            if not hop_allowed(self.allowed_from, cls):
                sock.close()
                raise self.refuse(host, peer)
            return sock, cls
        raise error

    def admit(self, conn: Any) -> None:
        """Before a request on a kept-alive connection: its peer must suit this hop too."""
        cls: AddressClass | None = getattr(conn, "peer_class", None)
        if cls is not None and not hop_allowed(self.allowed_from, cls):
            raise self.refuse(conn.host, str(conn.sock.getpeername()[0]))
        self.last = conn


def _dial(address: str, port: int, timeout: float, options: Any) -> socket.socket:
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        for opt in options or ():
            sock.setsockopt(*opt)
        sock.settimeout(timeout)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


class _GuardedMixin:
    """What both connection classes add: pinned connects, checked reuse, a header deadline.

    The deadline runs from the TCP connect (so a TLS handshake dripped byte by byte counts)
    or, on a kept-alive connection, from the request, to the end of the response headers.
    """

    guard: _Guard
    peer_class: AddressClass | None = None
    deadline: threading.Timer | None = None
    expired: threading.Event | None = None
    sock: socket.socket | None
    host: str
    port: int
    timeout: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        sock, self.peer_class = self.guard.connect(
            self.host, self.port, self.timeout, self.socket_options
        )
        self.guard.last = self
        self._arm(sock)
        return sock

    def _arm(self, sock: socket.socket | None) -> None:
        if self.deadline is not None:
            return
        expired = self.expired = threading.Event()

        def expire() -> None:
            expired.set()
            shutdown(sock)

        self.deadline = threading.Timer(self.guard.header_timeout, expire)
        self.deadline.daemon = True
        self.deadline.start()

    def _disarm(self) -> bool:
        """Stop the deadline; True if it had already fired."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        return self.expired is not None and self.expired.is_set()

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:
            self.guard.admit(self)
        else:
            self.guard.last = self
        super().request(*args, **kwargs)  # type: ignore[misc]

    def getresponse(self) -> Any:
        self._arm(self.sock)
        try:
            response = super().getresponse()  # type: ignore[misc]
        except http.client.LineTooLong as exc:
            raise _bad_response(self.host, f"a header line over the limit ({exc})") from None
        except (http.client.HTTPException, OSError) as exc:
            if self._disarm():
                raise _header_timeout(self.host, self.guard.header_timeout) from None
            bad = isinstance(exc, http.client.BadStatusLine) or str(exc).startswith("got more")
            if bad and not isinstance(exc, http.client.RemoteDisconnected):
                raise _bad_response(self.host, str(exc) or type(exc).__name__) from None
            raise
        if self._disarm():  # the cut can look like the end of the headers: never trust it
            response.close()
            raise _header_timeout(self.host, self.guard.header_timeout)
        return response

    def close(self) -> None:
        self._disarm()
        super().close()  # type: ignore[misc]


def _bad_response(host: str, what: str) -> ImageFetchError:
    return ImageFetchError(f"{host} sent an invalid HTTP response: {what}", reason="bad-response")


def _header_timeout(host: str, seconds: float) -> ImageFetchError:
    return ImageFetchError(
        f"{host} did not finish its response headers within {seconds:g} s",
        reason="header-timeout",
        hint="raise [image_cache] download_header_timeout if the server is just slow",
    )


class _Adapter(requests.adapters.HTTPAdapter):
    """Installs connection pools whose connections go through one _Guard."""

    def __init__(self, guard: _Guard) -> None:
        self.guard = guard
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        guard = self.guard
        conn = type("GuardedHTTPConnection", (_GuardedMixin, HTTPConnection), {"guard": guard})
        tls = type("GuardedHTTPSConnection", (_GuardedMixin, HTTPSConnection), {"guard": guard})
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedPool", (HTTPConnectionPool,), {"ConnectionCls": conn}),
            "https": type("GuardedTLSPool", (HTTPSConnectionPool,), {"ConnectionCls": tls}),
        }


# --- the client -----------------------------------------------------------------------------


class HttpClient:
    """Requests with checked redirects over guarded connections; one per source or registry."""

    def __init__(
        self,
        options: HttpOptions | None = None,
        *,
        resolve: Resolver = system_resolver,
        classify_address: Classifier = classify,
    ) -> None:
        self.options = options or HttpOptions()
        self.resolve = resolve
        self.guard = _Guard(
            resolve,
            classify_address,
            self.options.header_timeout,
            connect_timeout=self.options.connect_timeout,
        )
        self.session = requests.Session()
        self.session.trust_env = self.options.trust_env  # no proxy or netrc surprises
        self.session.verify = self.options.ca_file or True
        adapter = _Adapter(self.guard)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def get(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        credentials: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """The first non-redirect answer, unread (stream=True); the caller checks its status.

        `credentials` go only to the origin (scheme, host, port) of `url`: after a hop to
        another origin they are dropped for the rest of the chain.
        """
        return self.request("GET", url, headers, credentials=credentials)

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        *,
        credentials: Mapping[str, str] | None = None,
        data: BinaryIO | bytes | None = None,
    ) -> requests.Response:
        """`get` for any method, with an optional body (the OCI registry client's uploads).

        Only GET and HEAD follow redirects: a body is not replayed to a place the server
        names, so another method gets the redirect answer itself and its caller decides.
        """
        home = origin_of(urlsplit(url))
        secret = dict(credentials or {})
        came_from, current = self.guard.origin, url
        for hop in range(self.options.max_redirects + 1):
            if origin_of(urlsplit(current)) != home:
                secret = {}
            self.guard.allowed_from, self.guard.redirect = came_from, hop > 0
            self.guard.last = None  # set by the connection that carries this request
            response = self._send(current, {**headers, **secret}, method, data)
            peer = getattr(self.guard.last, "peer_class", None)
            if self.guard.origin is None:
                self.guard.origin = peer
            if not response.is_redirect or method not in ("GET", "HEAD"):
                return response
            response.close()
            try:
                target = urljoin(current, response.headers.get("Location", ""))
            except ValueError:
                target = response.headers.get("Location", "")
            proxied = peer is None  # through a proxy: only the names can be checked
            check_redirect(
                current,
                target,
                self.resolve,
                origin=None if proxied else peer,
                classify_address=self.guard.classify,
            )
            came_from, current = (peer or came_from), target
        raise ImageFetchError(
            f"more than {self.options.max_redirects} redirects from {redact_url(url)}",
            reason="redirect-refused",
        )

    def _send(
        self,
        url: str,
        headers: Mapping[str, str],
        method: str = "GET",
        data: BinaryIO | bytes | None = None,
    ) -> requests.Response:
        shown = redact_url(url)
        try:
            return self.session.request(
                method,
                url,
                headers=dict(headers),
                data=data,
                stream=True,
                allow_redirects=False,
                timeout=(self.options.connect_timeout, self.options.stall_timeout),
            )
        except requests.exceptions.RequestException as exc:
            conn = self.guard.last
            if conn is not None and conn.expired is not None and conn.expired.is_set():
                raise _header_timeout(
                    urlsplit(url).hostname or "", conn.guard.header_timeout
                ) from exc
            raise _typed(exc, shown) from exc


def _typed(exc: requests.exceptions.RequestException, shown: str) -> Exception:
    """The error for what requests raised; a read timeout is transient (it may be resumed)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return ImageFetchError(
            f"TLS verification failed for {shown}: {_cause(exc)}",
            reason="tls-failed",
            hint="give the CA bundle with [glance] cafile, or fix the server's certificate",
        )
    if isinstance(exc, requests.exceptions.ConnectionError):
        return ImageFetchError(
            f"cannot connect to {shown}: {_cause(exc)}", reason="connection-failed"
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return TransientFetchError(f"timed out talking to {shown}")
    return ImageFetchError(f"cannot fetch {shown}: {type(exc).__name__}")


def _cause(exc: BaseException) -> str:
    """The innermost OS-level reason ("Connection refused"), never a URL with credentials."""
    seen: BaseException | None = exc
    reason, visited = type(exc).__name__, set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, ssl.SSLError):
            reason = re.sub(r"^\[[^]]*\] | \(_ssl\.c:\d+\)$", "", seen.strerror or str(seen))
        elif isinstance(seen, OSError) and seen.strerror:
            reason = seen.strerror
        seen = seen.__cause__ or seen.__context__ or _first_arg_exception(seen)
    return reason


def _first_arg_exception(exc: BaseException) -> BaseException | None:
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, BaseException):
            return arg
        inner = getattr(arg, "reason", None)  # MaxRetryError carries its cause as .reason
        if isinstance(inner, BaseException):
            return inner
    return None
