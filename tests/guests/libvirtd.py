"""libvirtd and virtlogd started by hand (no systemd here) and stopped by pid, and libvirt's
`default` network put back the way it was found."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

DAEMONS = (
    ("virtlogd", "/run/virtlogd.pid", "/run/libvirt/virtlogd-sock"),
    ("libvirtd", "/run/libvirtd.pid", "/run/libvirt/libvirt-sock"),
)
URI = "qemu:///system"


def _alive(pidfile: str) -> bool:
    try:
        pid = int(Path(pidfile).read_text().strip())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return False
    return state != "Z"


def virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, check=False
    ).stdout


@contextlib.contextmanager
def libvirt_daemons() -> Iterator[None]:
    """Start virtlogd and libvirtd unless running; afterwards stop the `default` network if
    it was not active before, then the daemons we started, by pid."""
    started: list[int] = []
    for daemon, pidfile, socket in DAEMONS:
        if _alive(pidfile) and Path(socket).exists():
            continue
        subprocess.run([f"/usr/sbin/{daemon}", "-d"], check=True)
        for _ in range(100):
            if _alive(pidfile) and Path(socket).exists():
                break
            time.sleep(0.1)
        started.append(int(Path(pidfile).read_text().strip()))
    network_was_active = "Active:         yes" in virsh("net-info", "default")
    try:
        yield
    finally:
        if not network_was_active:
            virsh("net-destroy", "default")  # its dnsmasq and virbr0 outlive libvirtd otherwise
        for pid in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
