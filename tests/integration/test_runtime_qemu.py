"""Running guests against a real qemu, cheaply: QMP with `-machine none`, and the detached
qemu lifecycle with a guest that has no operating system (SeaBIOS finds nothing to boot), so
it never answers the power button: exactly the case where stop must fall back to destroy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest import Guest
from tests.images import MiB, ext4_image
from vmdisk.errors import InstanceNotFound, InstanceNotRunning, InstanceRunning, QmpError
from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import InstanceSpec
from vmdisk.qmp import Qmp
from vmdisk.runtime.state import VmState, pid_alive
from vmdisk.settings import Flavor, load_settings

FLAVOR = Flavor("tiny", 1, 64, 1)


@pytest.fixture
def bare_qemu(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    sock = tmp_path / "q.sock"
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
         "-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.05)
    yield proc, sock
    proc.kill()
    proc.wait()


def test_qmp_against_a_real_qemu(bare_qemu: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, sock = bare_qemu
    with Qmp(sock) as qmp:
        assert qmp.greeting["QMP"]["version"]["qemu"]["major"] >= 7
        assert qmp.execute("query-status")["running"] is True
        with pytest.raises(QmpError, match="no-such-command"):
            qmp.execute("no-such-command")
        qmp.execute("stop")
        assert qmp.execute("query-status")["status"] == "paused"
        qmp.execute("quit")  # the SHUTDOWN event may come before the answer: it is kept aside
        assert all("event" in e for e in qmp.events)
    assert proc.wait(10) == 0
    with pytest.raises(QmpError) as err:
        Qmp(sock).connect()
    assert err.value.reason == "qmp-unavailable"


def make_host(tmp: Path) -> Host:
    settings = load_settings(None, env={}, overrides={"instances_path": str(tmp / "inst")})
    lib = dataclasses.replace(settings.libvirt, virt_type="qemu")
    return Host(dataclasses.replace(settings, libvirt=lib))


@pytest.fixture
def host_with_vm(tmp_path: Path) -> Iterator[Host]:
    host = make_host(tmp_path)
    image = ext4_image(tmp_path / "base.raw", {"hello": b"hi\n"}, size=8 * MiB)
    spec = InstanceSpec("bare", str(uuidlib.uuid4()), FLAVOR)
    host.create_instance(spec, ImageRequest(str(image)))
    yield host
    with contextlib.suppress(InstanceNotFound):
        host.stop("bare", force=True)


def test_detached_qemu_lifecycle(host_with_vm: Host) -> None:
    host = host_with_vm
    inst = host.instance("bare")
    assert host.status("bare").state is VmState.STOPPED
    with pytest.raises(InstanceNotRunning):
        host.address("bare")
    started = host.start("bare", via="qemu")
    assert started.via == "qemu" and started.why == "asked"
    status = host.status("bare")
    assert status.state is VmState.RUNNING and status.pid is not None
    assert status.ssh is not None and status.ssh.startswith("127.0.0.1:")
    cmdline = Path(f"/proc/{status.pid}/cmdline").read_bytes().split(b"\0")
    mac = inst.record.macs[0]
    assert f"virtio-net-pci,netdev=net0,mac={mac}".encode() in cmdline
    assert host.address("bare") == ("127.0.0.1", int(status.ssh.rsplit(":", 1)[1]))
    assert host.statuses()[inst.record.uuid].state is VmState.RUNNING

    for refused in (
        lambda: host.delete_instance("bare"),
        lambda: host.resize_instance("bare", 2, None),
        lambda: host.rescue_instance("bare", None),
        lambda: host.start("bare", via="qemu"),
    ):
        with pytest.raises(InstanceRunning) as err:
            refused()
        assert err.value.reason == "running" and err.value.exit_code == 1
    assert (inst.path / "disk").exists()

    os.kill(status.pid, signal.SIGKILL)  # qemu dies without removing its pidfile
    for _ in range(50):
        if host.status("bare").state is VmState.CRASHED:
            break
        time.sleep(0.1)
    assert host.status("bare").state is VmState.CRASHED
    host.start("bare", via="qemu")  # a crashed guest starts again
    stopped = host.stop("bare", timeout=2)  # no OS: the power button does nothing
    assert stopped.was is VmState.RUNNING and not stopped.graceful and stopped.destroyed
    assert stopped.duration >= 2
    assert host.status("bare").state is VmState.STOPPED
    assert not (inst.path / "qemu.pid").exists()
    assert host.stop("bare").was is VmState.STOPPED  # stopping a stopped guest is fine


def test_delete_force_stops_first(host_with_vm: Host) -> None:
    host = host_with_vm
    path = host.instance("bare").path
    host.start("bare", via="qemu")
    pid = host.status("bare").pid
    sockets = host.guests._qemu(host.instance("bare")).sockets(None)
    host.delete_instance("bare", force=True)
    assert not path.exists() and not sockets.exists()
    assert pid is not None and not pid_alive(pid, path.name)


def cli(instances: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "vmdisk", "--instances-path", str(instances), *args]
    env = {**os.environ, "VMDISK_LIBVIRT__VIRT_TYPE": "qemu"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_cli_status_list_and_refusals(host_with_vm: Host) -> None:
    instances = host_with_vm.settings.instances_path
    assert cli(instances, "start", "bare", "--via", "qemu").returncode == 0
    listed = json.loads(cli(instances, "--json", "list").stdout)
    assert [(r["name"], r["state"]) for r in listed] == [("bare", "running")]
    refused = cli(instances, "delete", "bare")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "vmdisk: error: bare is running (via qemu): cannot delete it",
        "hint: stop it first: vmdisk stop bare",
    ]
    stopped = cli(instances, "--json", "stop", "bare", "--force")
    assert json.loads(stopped.stdout)["destroyed"] is True
    assert json.loads(cli(instances, "--json", "status", "bare").stdout)["state"] == "stopped"
    assert "bare is stopped" in cli(instances, "ssh", "bare", "--", "true").stderr


def test_boot_fails_on_timeout_and_when_wait_for_never_shows(tmp_path: Path, guest: Guest) -> None:
    host = make_host(tmp_path)
    image = ext4_image(tmp_path / "base.raw", {"hello": b"hi\n"}, size=8 * MiB)
    smoke = Flavor("smoke", 1, 512, 1)  # the kernel needs more than the BIOS-only guests
    host.create_instance(
        InstanceSpec("smoke", str(uuidlib.uuid4()), smoke), ImageRequest(str(image))
    )
    instances = host.settings.instances_path
    began = time.monotonic()
    timed_out = cli(instances, "boot", "smoke", "--timeout", "2", "--grace", "1")
    assert timed_out.returncode == 1, timed_out.stderr
    assert "boot timed out after 2 s" in timed_out.stderr
    assert time.monotonic() - began < 60
    unseen = cli(
        instances, "boot", "smoke", "--kernel", str(guest.kernel), "--initrd", str(guest.initrd),
        "--cmdline", "console=ttyS0 quiet", "--timeout", "180", "--wait-for", "never printed",
    )  # fmt: skip
    assert unseen.returncode == 1, unseen.stdout[-2000:] + unseen.stderr
    assert "'never printed' never showed" in unseen.stderr
    assert "GUEST: done" in unseen.stdout
