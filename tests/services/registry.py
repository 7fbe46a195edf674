"""A real OCI registry for the tests: Debian's `docker-registry` (the CNCF distribution server).

Each registry gets its own config, a filesystem storage directory and a free port on 127.0.0.1,
optionally htpasswd auth (bcrypt, made with apache2-utils' `htpasswd -B`). It is stopped by the
pid we started, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

CONFIG = """version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  cache:
    blobdescriptor: ""
http:
  addr: 127.0.0.1:{port}
  secret: vmdisk-test-only
{auth}"""

AUTH = """auth:
  htpasswd:
    realm: vmdisk-test
    path: {htpasswd}
"""


@dataclass(frozen=True)
class Registry:
    address: str  # 127.0.0.1:PORT
    storage: Path
    pid: int
    username: str | None = None
    password: str | None = None

    def url(self, repo: str) -> str:
        return f"oci://{self.address}/{repo}"

    def blob_path(self, digest: str) -> Path:
        """Where distribution keeps a blob: docker/registry/v2/blobs/sha256/ab/abcd.../data."""
        hexdigest = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


def available() -> bool:
    return shutil.which("docker-registry") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(
    workdir: Path, *, username: str | None = None, password: str | None = None
) -> Iterator[Registry]:
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    auth = ""
    if username is not None and password is not None:
        htpasswd = workdir / "htpasswd"
        subprocess.run(
            ["htpasswd", "-B", "-b", "-c", str(htpasswd), username, password],
            check=True, capture_output=True,
        )  # fmt: skip
        auth = AUTH.format(htpasswd=htpasswd)
    port = _free_port()
    config = workdir / "config.yml"
    config.write_text(CONFIG.format(storage=storage, port=port, auth=auth))
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_up(port, proc, workdir)
        yield Registry(f"127.0.0.1:{port}", storage, proc.pid, username, password)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _wait_up(port: int, proc: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (workdir / "registry.log").read_text()[-2000:]
            raise RuntimeError(f"docker-registry exited {proc.returncode}: {tail}")
        try:
            requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError("docker-registry did not answer within 20 s")
