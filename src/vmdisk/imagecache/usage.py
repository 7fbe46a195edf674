"""Which processes hold a file open: a scan of /proc/*/fd, to refuse touching a running disk.

vmdisk does not own a guest's lifecycle (`vmdisk boot`, libvirt or a hand-started qemu may run
it), so the only reliable answer to "is this disk in use by a running VM" is the kernel's:
a process with the file open. Processes we may not inspect are skipped (run as root to see
libvirt's qemu).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def holders(paths: Iterable[Path], proc: Path = PROC) -> dict[Path, list[int]]:
    """path -> pids that have it open (by device and inode, so renames and links count)."""
    wanted = {ident: p for p in paths if (ident := _identity(p)) is not None}
    found: dict[Path, list[int]] = {}
    if not wanted:
        return found
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    ident = _identity(fd)
                    if ident in wanted:
                        found.setdefault(wanted[ident], []).append(int(entry.name))
    return found


def describe(found: dict[Path, list[int]]) -> str:
    return ", ".join(
        f"{p.name} (pid {', '.join(map(str, sorted(set(pids))))})" for p, pids in found.items()
    )
