"""`vmdisk console`: attach a terminal to a detached qemu's ttyS0, or follow console.log.

The attach relays bytes between the terminal (raw mode) and qemu's console socket until
Ctrl-] (as in telnet and virsh console) or until qemu closes it.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

from vmdisk.errors import InstanceNotRunning

ESCAPE = b"\x1d"  # Ctrl-]


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach(path: Path, stdin: int | None = None, stdout: int | None = None) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise InstanceNotRunning(f"no console at {path}: {exc}", reason="not-running") from exc
    fd_in = sys.stdin.fileno() if stdin is None else stdin
    fd_out = sys.stdout.fileno() if stdout is None else stdout
    with sock, _raw(fd_in):
        while True:
            ready, _, _ = select.select([fd_in, sock], [], [])
            if sock in ready:
                data = sock.recv(4096)
                if not data:
                    return
                os.write(fd_out, data)
            if fd_in in ready:
                data = os.read(fd_in, 1024)
                if not data or ESCAPE in data:
                    return
                sock.sendall(data)


def follow(path: Path, write: Callable[[bytes], None], alive: Callable[[], bool]) -> None:
    """Print console.log and what the guest appends, until it stops (or Ctrl-C)."""
    offset = 0
    while True:
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
            offset += len(data)
            if data:
                write(data)
        if not alive():
            return
        time.sleep(0.2)
