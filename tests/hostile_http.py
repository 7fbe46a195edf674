"""A raw-socket HTTP server on loopback that misbehaves on purpose, byte by byte.

tests/httpserver.py is a polite server with knobs; this one lets a route write whatever it
likes on the socket: headers dripped one byte at a time, oversized header lines, ranges that
start elsewhere, content that changes between requests. It can listen on 127.0.0.1 and ::1
at the same port, so a name resolved first to one and then to the other (rebinding, by a fake
resolver in the test) reaches the same routes. Every request is recorded with its headers.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Seen:
    """One request as the server read it."""

    path: str
    headers: dict[str, str]  # lower-case names
    local: str  # the address it arrived on: "127.0.0.1" or "::1"


Handler = Callable[["Seen", socket.socket], None]


@dataclass
class HostileServer:
    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    scheme: str = "http"

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{self.port}{path}"

    def hits(self, path: str, local: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.path == path and local in (None, s.local)]


def send(sock: socket.socket, status: int, headers: dict[str, str], body: bytes = b"") -> None:
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)


def redirect(location: str, status: int = 302) -> Handler:
    def handle(req: Seen, sock: socket.socket) -> None:
        send(sock, status, {"Location": location, "Content-Length": "0"})

    return handle


def body(data: bytes, **headers: str) -> Handler:
    def handle(req: Seen, sock: socket.socket) -> None:
        send(sock, 200, {"Content-Length": str(len(data)), **headers}, data)

    return handle


def drip_headers(every: float = 0.3) -> Handler:
    """A status line, then one header byte every `every` seconds, never an end."""

    def handle(req: Seen, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        with contextlib.suppress(OSError):
            for _ in range(600):
                time.sleep(every)
                sock.sendall(b"a")

    return handle


def huge_header(size: int = 70_000, count: int = 1) -> Handler:
    """Header lines longer than any client should buffer (or more of them than it should)."""

    def handle(req: Seen, sock: socket.socket) -> None:
        lines = "".join(f"X-Big-{i}: {'a' * size}\r\n" for i in range(count))
        with contextlib.suppress(OSError):
            sock.sendall(f"HTTP/1.1 200 OK\r\n{lines}Content-Length: 1\r\n\r\nx".encode())

    return handle


@dataclass
class Resumable:
    """An image served with ranges and cut on the first GET; `mode` says how a resume is met.

    "honest": If-Range honoured (206 while the ETag matches, else a 200 of what is there now);
    "ignores-if-range": a 206 of what is there now, whatever If-Range said; "from-zero": a 206
    whose range starts at 0 whatever was asked; "other-total": a 206 at the right offset of an
    image twice as long; "no-validator": ranges honoured, but no ETag or Last-Modified ever.
    With `changes`, the content is the second of `versions` after the first GET.
    """

    versions: list[bytes]
    mode: str = "honest"
    changes: bool = False
    cut_after: int = 0
    requests: int = 0

    def __call__(self, req: Seen, sock: socket.socket) -> None:
        self.requests += 1
        index = 1 if self.changes and self.requests > 1 else 0
        data, etag = self.versions[index], f'"v{index}"'
        headers = {"Accept-Ranges": "bytes"}
        if self.mode != "no-validator":
            headers["ETag"] = etag
        wanted = req.headers.get("range", "")
        honest_miss = self.mode == "honest" and req.headers.get("if-range") != etag
        if self.requests == 1 or not wanted or honest_miss:
            headers["Content-Length"] = str(len(data))
            cut = self.cut_after if self.requests == 1 else len(data)
            send(sock, 200, headers, data[:cut])
            return
        start = int(wanted.removeprefix("bytes=").split("-")[0])
        if self.mode == "from-zero":
            start = 0
        if self.mode == "other-total":
            data = data + data
        part = data[start:]
        headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        headers["Content-Length"] = str(len(part))
        send(sock, 206, headers, part)


def _read_request(conn: socket.socket) -> tuple[str, dict[str, str]] | None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    lines = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return path, headers


def _serve(
    state: HostileServer, listener: socket.socket, local: str, tls: ssl.SSLContext | None
) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_one, args=(state, conn, local, tls), daemon=True).start()


def _one(state: HostileServer, conn: socket.socket, local: str, tls: ssl.SSLContext | None) -> None:
    with conn:
        try:
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)
            request = _read_request(conn)
            if request is None:
                return
            seen = Seen(request[0], request[1], local)
            state.seen.append(seen)
            handler = state.routes.get(seen.path)
            if handler is None:
                send(conn, 404, {"Content-Length": "0"})
            else:
                handler(seen, conn)
        except (OSError, ssl.SSLError):
            pass


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(32)
    return sock


def _listeners(hosts: tuple[str, ...]) -> list[socket.socket]:
    """One listener per host, all on one port (retried until a port is free on every host)."""
    for _ in range(50):
        first = _listen(hosts[0], 0)
        port = first.getsockname()[1]
        rest: list[socket.socket] = []
        try:
            rest = [_listen(h, port) for h in hosts[1:]]
        except OSError:
            for s in [first, *rest]:
                s.close()
            continue
        return [first, *rest]
    raise OSError("no port free on all of " + ", ".join(hosts))


@contextlib.contextmanager
def serve(
    routes: dict[str, Handler] | None = None,
    hosts: tuple[str, ...] = ("127.0.0.1",),
    tls: ssl.SSLContext | None = None,
) -> Iterator[HostileServer]:
    """Serve `routes` on each of `hosts` at one port; https when given a server TLS context."""
    state = HostileServer(routes or {})
    listeners = _listeners(hosts)
    state.port = listeners[0].getsockname()[1]
    state.scheme = "https" if tls else "http"
    for listener, host in zip(listeners, hosts, strict=True):
        threading.Thread(target=_serve, args=(state, listener, host, tls), daemon=True).start()
    try:
        yield state
    finally:
        for listener in listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()


def self_signed(directory: str) -> tuple[ssl.SSLContext, str]:
    """A server context with a fresh self-signed certificate for 127.0.0.1, and its PEM path."""
    import datetime as dt
    import ipaddress
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmdisk test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, str(cert_path)


@contextlib.contextmanager
def slow_relay(target_port: int, every: float = 0.1) -> Iterator[int]:
    """A TCP relay on 127.0.0.1 that passes the server's bytes on one at a time, `every` apart.

    In front of a TLS server this drips the handshake itself, before any HTTP is spoken.
    """
    listener = _listen("127.0.0.1", 0)

    def pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 if delay else 65536):
                if delay:
                    time.sleep(delay)
                dst.sendall(data)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", target_port))
            for args in ((client, upstream, 0.0), (upstream, client, every)):
                threading.Thread(target=pump, args=args, daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
