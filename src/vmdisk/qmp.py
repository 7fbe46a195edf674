"""A small QMP client: qemu's JSON control protocol over the unix socket in the instance dir.

Only what the lifecycle needs: the greeting, capability negotiation, one command at a time and
its answer. Asynchronous events (SHUTDOWN, POWERDOWN, ...) may arrive before an answer; they are
kept in `events` and never mistaken for it.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from vmdisk.errors import QmpError


class Qmp:
    """`with Qmp(path) as q: q.execute("query-status")`."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._sock: socket.socket | None = None
        self._buffer = b""
        self.greeting: dict[str, Any] = {}

    def __enter__(self) -> Qmp:
        self.connect()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise QmpError(
                f"cannot connect to QMP at {self.path}: {exc.strerror or exc}",
                reason="qmp-unavailable",
            ) from exc
        self._sock = sock
        self.greeting = self._read()
        if "QMP" not in self.greeting:
            raise QmpError(f"{self.path} did not greet as QMP: {self.greeting}", reason="qmp")
        self.execute("qmp_capabilities")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Send one command and return its "return" value; an "error" becomes QmpError."""
        if self._sock is None:
            raise QmpError("QMP is not connected", reason="qmp")
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise QmpError(f"QMP {command}: {exc}", reason="qmp-unavailable") from exc
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                error = reply["error"]
                raise QmpError(f"QMP {command}: {error.get('desc', error)}", reason="qmp")
            if "return" in reply:
                return reply["return"]

    def _read(self) -> dict[str, Any]:
        if self._sock is None:
            raise QmpError("QMP is not connected", reason="qmp")
        while b"\n" not in self._buffer:
            try:
                chunk = self._sock.recv(65536)
            except OSError as exc:  # a timeout included
                raise QmpError(f"QMP at {self.path}: {exc}", reason="qmp-unavailable") from exc
            if not chunk:
                raise QmpError(f"QMP at {self.path} closed the connection", reason="qmp-closed")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise QmpError(f"QMP at {self.path} sent {line[:80]!r}", reason="qmp") from exc
        if not isinstance(data, dict):
            raise QmpError(f"QMP at {self.path} sent {line[:80]!r}", reason="qmp")
        return data
