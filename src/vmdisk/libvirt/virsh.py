"""virsh, the one way vmdisk talks to libvirt, with its connection errors made clear."""

from __future__ import annotations

import socket
from pathlib import Path

from vmdisk.errors import BackendError, ToolError
from vmdisk.tools.runner import Runner

SYSTEM_SOCKET = Path("/run/libvirt/libvirt-sock")


class Virsh:
    """`virsh -c URI VERB ...`; stdout stripped. A daemon that does not answer is one error."""

    def __init__(self, runner: Runner, uri: str) -> None:
        self.runner = runner
        self.uri = uri

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        argv = ["virsh", "-c", self.uri, *args]
        result = self.runner.run(argv, timeout=timeout, check=False)
        if result.returncode != 0:
            stderr = result.stderr.decode("utf-8", "replace").strip()
            if "failed to connect" in stderr.lower() or "socket" in stderr.lower():
                raise BackendError(
                    f"cannot connect to libvirt at {self.uri}: is libvirtd running?",
                    reason="libvirt-unavailable",
                    hint="start it (systemctl start libvirtd, or virtlogd -d; libvirtd -d)",
                )
            if check:
                detail = stderr.splitlines()[-1] if stderr else f"exit code {result.returncode}"
                raise ToolError(
                    f"virsh {args[0]} failed: {detail}",
                    argv=argv,
                    returncode=result.returncode,
                    stderr=stderr,
                    reason="tool-failed",
                )
        return result.text.strip()


def libvirt_answers(path: Path = SYSTEM_SOCKET) -> bool:
    """Whether libvirtd listens on its system socket (connecting is enough: no virsh call)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True
