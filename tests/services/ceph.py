"""A one-node Ceph cluster for the tests: memstore OSD, loopback only, stopped by pid.

Ceph 16 from Debian; about 3 s to start. Every path lives in the cluster's directory.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CONF = """[global]
fsid = {fsid}
mon host = [v1:127.0.0.1:{port}]
mon initial members = a
public addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr2 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
mon allow pool delete = true
osd objectstore = memstore
memstore device bytes = 4294967296
paxos propose interval = 0.05
osd crush chooseleaf type = 0
run dir = {d}/run
log file = {d}/log/$name.log
admin socket = {d}/run/$name.asok
mon data = {d}/mon/$cluster-$id
osd data = {d}/osd/$cluster-$id
keyring = {d}/keyring
"""


@dataclass
class Ceph:
    directory: Path
    conf: Path
    fsid: str
    processes: list[subprocess.Popen[bytes]]

    def run(self, *args: str, timeout: float = 30) -> str:
        argv = [args[0], "-c", str(self.conf), *args[1:]]
        return subprocess.run(
            argv, capture_output=True, text=True, check=True, timeout=timeout
        ).stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _daemon(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


@contextmanager
def ceph_cluster(directory: Path, pools: tuple[str, ...] = ("vms", "images")) -> Iterator[Ceph]:
    """Start a cluster; an OSD that does not come up (seen right after another cluster stopped:
    it reports 'wrong fsid') or a command failing while it starts (seen in CI: `ceph osd stat`
    exiting 1 under load) gets a fresh cluster, up to three times."""
    failures: list[str] = []
    for attempt in range(3):
        cluster = Ceph(
            directory / f"try{attempt}",
            directory / f"try{attempt}" / "ceph.conf",
            str(uuid.uuid4()),
            [],
        )
        try:
            _start(cluster)
        except _NotUp as exc:
            failures.append(f"try {attempt}: {exc}")
            _stop(cluster)
            continue
        try:
            for pool in pools:
                cluster.run("ceph", "osd", "pool", "create", pool, "8")
                cluster.run("rbd", "pool", "init", pool, timeout=60)
            yield cluster
        finally:
            _stop(cluster)
        return
    raise RuntimeError("the test Ceph cluster did not come up three times: " + "; ".join(failures))


class _NotUp(Exception):
    pass


def _start(cluster: Ceph) -> None:
    """Any failing or hanging command while the cluster starts means "not up", with its stderr."""
    try:
        _bring_up(cluster)
    except subprocess.CalledProcessError as exc:
        raise _NotUp(f"{' '.join(map(str, exc.cmd))}: exit {exc.returncode}: {exc.stderr}") from exc
    except subprocess.TimeoutExpired as exc:
        raise _NotUp(f"{' '.join(map(str, exc.cmd))}: timed out") from exc


def _osd_up(cluster: Ceph) -> bool:
    try:
        return "1 up" in cluster.run("ceph", "osd", "stat", timeout=15)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return False  # the monitor may be busy electing itself; ask again


def _bring_up(cluster: Ceph) -> None:
    d, port = cluster.directory, _free_port()
    for sub in ("run", "log", "mon", "osd/ceph-0"):
        (d / sub).mkdir(parents=True)
    cluster.conf.write_text(CONF.format(fsid=cluster.fsid, port=port, d=d))
    c = str(cluster.conf)
    subprocess.run(
        [
            "ceph-authtool",
            "--create-keyring",
            str(d / "keyring"),
            "--gen-key",
            "-n",
            "mon.",
            "--cap",
            "mon",
            "allow *",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "monmaptool",
            "--create",
            "--addv",
            "a",
            f"[v1:127.0.0.1:{port}]",
            "--fsid",
            cluster.fsid,
            str(d / "monmap"),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["ceph-mon", "-c", c, "--mkfs", "-i", "a", "--monmap", str(d / "monmap")],
        check=True,
        capture_output=True,
    )
    cluster.processes.append(_daemon(["ceph-mon", "-c", c, "-i", "a", "-f"], d / "log/mon.out"))
    osd_uuid = str(uuid.uuid4())
    osd_id = cluster.run("ceph", "osd", "new", osd_uuid)
    subprocess.run(
        ["ceph-osd", "-c", c, "--mkfs", "-i", osd_id, "--osd-uuid", osd_uuid],
        check=True,
        capture_output=True,
    )
    cluster.processes.append(_daemon(["ceph-osd", "-c", c, "-i", osd_id, "-f"], d / "log/osd.out"))
    deadline = time.monotonic() + 40
    while not _osd_up(cluster):
        if time.monotonic() > deadline:
            raise _NotUp("the OSD did not report up within 40 s")
        time.sleep(0.2)


def _stop(cluster: Ceph) -> None:
    for proc in reversed(cluster.processes):
        proc.terminate()
    for proc in cluster.processes:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
