"""A real OpenStack Glance for the tests: pinned in its own venv, gunicorn on 127.0.0.1.

sqlite database, a file store and an rbd store on the test Ceph cluster, no Keystone. The venv
is built once per machine (about a minute) and reused.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

VERSION = "33.0.0"
VENV = Path(f"/var/tmp/vmdisk-test-glance-{VERSION}")
REPO = Path(__file__).resolve().parents[2]

CONF = """[DEFAULT]
enabled_backends = file:file, ceph:rbd
show_image_direct_url = True
log_file = {d}/glance.log
[database]
connection = sqlite:///{d}/glance.sqlite
[glance_store]
default_backend = file
[file]
filesystem_store_datadir = {d}/images
[ceph]
rbd_store_pool = images
rbd_store_ceph_conf = {ceph_conf}
rbd_store_user = admin
[os_glance_staging_store]
filesystem_store_datadir = {d}/staging
[os_glance_tasks_store]
filesystem_store_datadir = {d}/tasks
[paste_deploy]
flavor =
config_file = {d}/glance-api-paste.ini
[oslo_policy]
enforce_new_defaults = False
enforce_scope = False
"""


def ensure_venv() -> Path:
    stamp = VENV / ".vmdisk-ready"
    if stamp.exists():
        return VENV
    shutil.rmtree(VENV, ignore_errors=True)
    python = shutil.which("python3") or sys.executable
    subprocess.run([python, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(VENV / "bin" / "pip"), "install", "-q", f"glance=={VERSION}", "gunicorn"], check=True
    )
    subprocess.run([str(REPO / "scripts" / "link-system-bindings"), str(VENV)], check=True)
    stamp.touch()
    return VENV


@dataclass
class GlanceServer:
    url: str
    directory: Path

    def upload(self, path: Path, disk_format: str, store: str) -> str:
        meta = {"name": path.name, "disk_format": disk_format, "container_format": "bare"}
        created = requests.post(f"{self.url}/v2/images", json=meta, timeout=30)
        created.raise_for_status()
        image_id = str(created.json()["id"])
        with open(path, "rb") as fh:
            put = requests.put(
                f"{self.url}/v2/images/{image_id}/file",
                data=fh,
                timeout=120,
                headers={"Content-Type": "application/octet-stream", "X-Image-Meta-Store": store},
            )
        put.raise_for_status()
        return image_id

    def image(self, image_id: str) -> dict[str, object]:
        return json.loads(requests.get(f"{self.url}/v2/images/{image_id}", timeout=30).text)

    def downloads(self, image_id: str) -> int:
        log = (self.directory / "access.log").read_text()
        return sum(1 for line in log.splitlines() if f"GET /v2/images/{image_id}/file" in line)

    def stored_file(self, image_id: str) -> Path:
        return self.directory / "images" / image_id


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def glance_server(directory: Path, ceph_conf: Path) -> Iterator[GlanceServer]:
    venv = ensure_venv()
    for sub in ("images", "staging", "tasks"):
        (directory / sub).mkdir(parents=True)
    shutil.copy(venv / "etc" / "glance" / "glance-api-paste.ini", directory)
    conf = directory / "glance-api.conf"
    conf.write_text(CONF.format(d=directory, ceph_conf=ceph_conf))
    env = {**os.environ, "OS_GLANCE_CONFIG_DIR": str(directory)}
    subprocess.run(
        [str(venv / "bin" / "glance-manage"), "--config-file", str(conf), "db_sync"],
        check=True,
        capture_output=True,
        env=env,
    )
    port = _free_port()
    log = open(directory / "gunicorn.out", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(venv / "bin" / "gunicorn"),
            "--worker-class",
            "gthread",
            "--workers",
            "1",
            "--threads",
            "4",
            "-b",
            f"127.0.0.1:{port}",
            "--access-logfile",
            str(directory / "access.log"),
            "glance.wsgi.api:application",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=directory,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/v2/images", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((directory / "gunicorn.out").read_text()[-2000:])
            time.sleep(0.2)
        yield GlanceServer(url, directory)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
