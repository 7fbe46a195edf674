"""Benchmark inputs made on the spot: a 1 GiB raw image (256 MiB of deterministic random data,
then zeros, sparse), the same as qcow2, a 2 GiB one, all served over HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import os
import random
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from vmdisk.host import Host
from vmdisk.settings import load_settings

MiB = 1024 * 1024
GiB = 1024 * MiB


class FileServer:
    """Serves files from a directory with Range support; counts GETs per path."""

    def __init__(self, root: Path) -> None:
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                path = root / self.path.lstrip("/")
                size = path.stat().st_size
                start = 0
                header = self.headers.get("Range")
                if header:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(size - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                with open(path, "rb") as fh:
                    fh.seek(start)
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        os.sendfile(self.wfile.fileno(), fh.fileno(), start, size - start)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Inputs:
    raw: Path
    qcow2: Path
    raw2g: Path
    server: FileServer
    data_bytes: int


def write_image(path: Path, data: int, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as fh:
        for _ in range(data // (16 * MiB)):
            fh.write(rng.randbytes(16 * MiB))
        fh.truncate(size)


def make_inputs(work: Path) -> Inputs:
    images = work / "images"
    images.mkdir()
    raw = images / "bench.raw"
    write_image(raw, 256 * MiB, GiB, seed=1)
    qcow2 = images / "bench.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True
    )
    raw2g = images / "bench2g.raw"
    write_image(raw2g, 512 * MiB, 2 * GiB, seed=2)
    return Inputs(raw, qcow2, raw2g, FileServer(images), 256 * MiB)


def host(root: Path, **overrides: object) -> Host:
    """A Host on `root`, TCG decided by setting (the KVM probe is not what is measured)."""
    settings = load_settings(None, env={}, overrides={"instances_path": str(root), **overrides})
    lib = dataclasses.replace(settings.libvirt, virt_type="qemu")
    return Host(dataclasses.replace(settings, libvirt=lib))
