"""A real HTTP server on 127.0.0.1 for intake tests: ranges, redirects, cuts, lies, stalls."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    location: str | None = None
    ranges: bool = True
    cut_after: int | None = None  # first GET stops after this many bytes (then works)
    cut_times: int = 1
    claim_length: int | None = None  # Content-Length that lies
    stall_after: int | None = None  # send this much, then hang
    content_type: str = "application/octet-stream"
    no_length: bool = False  # no Content-Length: the body ends when the connection closes
    rate: int | None = None  # bytes per second, to make a download take a while
    cuts_done: int = 0


@dataclass
class ImageServer:
    routes: dict[str, Route] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _handler(state: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.hits[self.path] += 1
            route = state.routes.get(self.path)
            if route is None:
                self._simple(404, b"not found")
                return
            if route.location is not None:
                self.send_response(route.status)
                self.send_header("Location", route.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if route.status != 200:
                self._simple(route.status, b"error")
                return
            self._body(route)

        def _simple(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self, route: Route) -> None:
            start = 0
            header = self.headers.get("Range")
            if header and route.ranges:
                start = int(header.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                total = len(route.body)
                self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
            else:
                self.send_response(200)
            data = route.body[start:]
            length = route.claim_length if route.claim_length is not None else len(data)
            if route.no_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(length))
            self.send_header("Content-Type", route.content_type)
            if route.ranges:
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if route.cut_after is not None and route.cuts_done < route.cut_times:
                route.cuts_done += 1
                self.wfile.write(data[: route.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            if route.stall_after is not None:
                self.wfile.write(data[: route.stall_after])
                self.wfile.flush()
                time.sleep(30)
                return
            if route.rate:
                step = max(1, route.rate // 20)
                for pos in range(0, len(data), step):
                    self.wfile.write(data[pos : pos + step])
                    time.sleep(0.05)
            else:
                self.wfile.write(data)
            if route.claim_length is not None:
                self.close_connection = True

    return Handler


@contextmanager
def serve(routes: dict[str, Route] | None = None) -> Iterator[ImageServer]:
    state = ImageServer(routes or {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]  # clients we kill
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
