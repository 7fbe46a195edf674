"""What a guest is doing, and what `vmdisk start` remembers about how it started it.

runtime.json (in the instance directory, next to instance.json) says which way the guest was
started, on which libvirt URI, where its sockets are and which host port reaches its ssh. It
outlives the guest so `status` knows whom to ask; the record itself is never touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from vmdisk.fsutil import write_atomic

RUNTIME_FILE = "runtime.json"


class VmState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"  # never started, or powered off / stopped by vmdisk
    CRASHED = "crashed"  # qemu died without a clean exit, or libvirt says so
    UNKNOWN = "unknown"  # started through libvirt, and libvirt does not answer

    @property
    def active(self) -> bool:
        """Whether the guest may be writing its disks (unknown counts: be safe)."""
        return self in (VmState.RUNNING, VmState.PAUSED, VmState.UNKNOWN)


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    via: str  # "qemu" or "libvirt"
    started_at: str
    uri: str | None = None  # libvirt
    network: str | None = None  # libvirt network or bridge the NIC is on
    ssh_port: int | None = None  # qemu user networking: 127.0.0.1:ssh_port -> guest 22
    control_dir: str | None = None  # qemu: where qmp.sock and console.sock are
    mac: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, directory: Path) -> None:
        write_atomic(directory / RUNTIME_FILE, json.dumps(self.to_dict(), indent=1).encode())

    @classmethod
    def load(cls, directory: Path) -> RuntimeInfo | None:
        try:
            data = json.loads((directory / RUNTIME_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError:
            return None


@dataclass(frozen=True, slots=True)
class VmStatus:
    """`vmdisk status`: the state, how it was started, and how to reach it."""

    name: str
    state: VmState
    via: str | None = None
    pid: int | None = None
    ssh: str | None = None  # "127.0.0.1:2222" or "192.168.122.45:22" when known
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": str(self.state),
            "via": self.via,
            "pid": self.pid,
            "ssh": self.ssh,
            "detail": self.detail,
        }


def pid_alive(pid: int, marker: str) -> bool:
    """Whether `pid` is a live (not zombie) process whose command line contains `marker`
    (the instance's uuid): a reused pid never passes for our qemu."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]:
        return False
    return marker.encode() in cmdline.split(b"\0")


def runtime_dir() -> Path:
    """Where sockets go when the instance directory's path is too long for a unix socket."""
    if os.geteuid() == 0:
        return Path("/run/vmdisk")
    return Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/vmdisk-{os.geteuid()}")  # noqa: S108
