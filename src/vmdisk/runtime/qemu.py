"""A guest under a detached qemu, no libvirt: `vmdisk start --via qemu`.

qemu daemonizes itself (`-daemonize`: the call returns once the machine is set up, with any
error on stderr), writes `qemu.pid` in the instance directory and removes it when it exits
cleanly. So: no pidfile is stopped, a pidfile whose process is gone is crashed (killed, or
qemu died). QMP (`qmp.sock`) answers status, power-down and quit; `console.sock` is ttyS0,
also logged to console.log. Sockets sit in the instance directory unless its path is too long
for a unix socket (108 bytes), then in a private directory under /run/vmdisk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import signal
import socket
import time
from pathlib import Path

from vmdisk.boot import QemuControl, qemu_argv
from vmdisk.errors import BackendError, QmpError, ToolError
from vmdisk.libvirt.domain import Domain, NicDevice
from vmdisk.qmp import Qmp
from vmdisk.runtime.state import RuntimeInfo, VmState, pid_alive, runtime_dir
from vmdisk.tools.runner import Runner

PIDFILE = "qemu.pid"
SOCKET_MAX = 100  # sun_path is 108 bytes with its NUL; keep a margin


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for the ssh forward (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def control_dir(instance_dir: Path, uuid: str) -> Path:
    if len(str(instance_dir / "console.sock")) <= SOCKET_MAX:
        return instance_dir
    path = runtime_dir() / uuid
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


class QemuGuest:
    def __init__(self, runner: Runner, instance_dir: Path, uuid: str) -> None:
        self.runner = runner
        self.dir = instance_dir
        self.uuid = uuid
        self.pidfile = instance_dir / PIDFILE

    def sockets(self, info: RuntimeInfo | None) -> Path:
        if info is not None and info.control_dir:
            return Path(info.control_dir)
        return control_dir(self.dir, self.uuid)

    def start(self, domain: Domain) -> RuntimeInfo:
        """Start qemu detached with a NIC forwarding a free host port to the guest's 22."""
        port: int | None = None
        nic = domain.nic
        if nic is None or nic.kind != "bridge":
            port = free_port()
            mac = nic.mac if nic is not None else ""
            nic = NicDevice("user", mac, model=nic.model if nic else "virtio", ssh_port=port)
        sockets = control_dir(self.dir, self.uuid)
        control = QemuControl(
            qmp=sockets / "qmp.sock",
            pidfile=self.pidfile,
            console_socket=sockets / "console.sock",
            daemonize=True,
        )
        self.pidfile.unlink(missing_ok=True)  # a crashed run's: it would say "crashed"
        argv = qemu_argv(dataclasses.replace(domain, nic=nic), control)
        try:
            self.runner.run(argv, timeout=120)
        except ToolError as exc:
            raise BackendError(
                f"qemu did not start: {exc.stderr.strip() or exc}", reason="qemu-failed"
            ) from exc
        return RuntimeInfo(
            via="qemu",
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            ssh_port=port,
            network=nic.source if nic.kind == "bridge" else "user",
            control_dir=str(sockets),
            mac=nic.mac,
        )

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def state(self, info: RuntimeInfo | None) -> tuple[VmState, int | None, str]:
        pid = self.pid()
        if pid is None:
            return VmState.STOPPED, None, ""
        if not pid_alive(pid, self.uuid):
            return VmState.CRASHED, pid, f"qemu (pid {pid}) is gone but left {PIDFILE}"
        try:
            with Qmp(self.sockets(info) / "qmp.sock", timeout=5) as qmp:
                status = qmp.execute("query-status").get("status", "")
        except QmpError as exc:
            return VmState.RUNNING, pid, f"QMP does not answer: {exc.message}"
        if status == "paused":
            return VmState.PAUSED, pid, status
        if status in ("guest-panicked", "internal-error", "io-error"):
            return VmState.CRASHED, pid, status
        return VmState.RUNNING, pid, status

    def powerdown(self, info: RuntimeInfo | None) -> None:
        with Qmp(self.sockets(info) / "qmp.sock") as qmp:
            qmp.execute("system_powerdown")

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and pid_alive(pid, self.uuid)

    def destroy(self, info: RuntimeInfo | None) -> None:
        """Pull the plug: QMP quit (qemu exits and removes its pidfile), else SIGKILL."""
        pid = self.pid()
        if pid is None or not pid_alive(pid, self.uuid):
            self.pidfile.unlink(missing_ok=True)
            return
        with contextlib.suppress(QmpError), Qmp(self.sockets(info) / "qmp.sock", 5) as qmp:
            qmp.execute("quit")
        for _ in range(50):
            if not pid_alive(pid, self.uuid):
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
