"""Named inter-process locks under <instances_path>/locks, shared or exclusive.

flock(2) locks belong to an open file description, so they exclude threads of one process
as well as other processes, and a crash releases them. Lock files are named like Nova's
(`locks/vmdisk-<cache entry name>`) so hosts sharing instances_path share them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from vmdisk.errors import InsufficientSpace, LockTimeout

PREFIX = "vmdisk-"
log = logging.getLogger(__name__)


class Waiting(Protocol):
    """Told once when a lock is busy (a line naming the holder) and when the wait ends."""

    def start(self, label: str, total: int | None) -> None: ...

    def done(self) -> None: ...


class Locks:
    """Factory for the locks of one instances_path."""

    def __init__(self, directory: Path, timeout: float = 3600.0) -> None:
        self.directory = directory
        self.timeout = timeout

    def path(self, name: str) -> Path:
        if "/" in name or name in {"", ".", ".."}:
            raise ValueError(f"bad lock name {name!r}")
        return self.directory / f"{PREFIX}{name}"

    @contextlib.contextmanager
    def exclusive(
        self,
        name: str,
        *,
        timeout: float | None = None,
        waiting: Waiting | None = None,
        what: str | None = None,
    ) -> Iterator[None]:
        """`waiting` hears who holds the lock (for `what`) if it is busy; LockTimeout at the
        deadline names the holder too."""
        limit = self.timeout if timeout is None else timeout
        with self._hold(name, fcntl.LOCK_EX, limit, waiting, what):
            yield

    @contextlib.contextmanager
    def shared(
        self,
        name: str,
        *,
        timeout: float | None = None,
        waiting: Waiting | None = None,
        what: str | None = None,
    ) -> Iterator[None]:
        limit = self.timeout if timeout is None else timeout
        with self._hold(name, fcntl.LOCK_SH, limit, waiting, what):
            yield

    def try_exclusive(self, name: str) -> contextlib.AbstractContextManager[bool]:
        """Take the lock only if nobody holds it; yields whether it was taken."""
        return self._try(name)

    @contextlib.contextmanager
    def _try(self, name: str) -> Iterator[bool]:
        fd = self._open(name)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def remove(self, name: str) -> None:
        """Remove a lock file; only call while holding it exclusively."""
        with contextlib.suppress(FileNotFoundError):
            self.path(name).unlink()

    def _open(self, name: str) -> int:
        try:
            return self._create(name)
        except FileNotFoundError:
            self.directory.mkdir(parents=True, exist_ok=True)
            return self._create(name)

    def _create(self, name: str) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.path(name), flags, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # Out of blocks or, as often on a small _base, out of inodes: a lock file is
            # the first file a fetch creates, so this is where it shows.
            raise InsufficientSpace(
                f"cannot create lock file {self.path(name).name} in {self.directory}: "
                f"no space or no free inodes ({os.strerror(exc.errno)})",
                reason="insufficient-space",
                hint="free some space or inodes (vmdisk cache prune) and run the command again",
            ) from exc

    @contextlib.contextmanager
    def _hold(
        self,
        name: str,
        mode: int,
        timeout: float,
        waiting: Waiting | None = None,
        what: str | None = None,
    ) -> Iterator[None]:
        deadline = time.monotonic() + timeout
        while True:
            fd = self._open(name)
            _acquire(fd, mode, deadline, name, waiting, what)
            # The file may have been removed (by a cleaner holding it) while we waited:
            # a lock on an unlinked inode protects nothing, so start again.
            if _same_file(fd, self.path(name)):
                break
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)


def _acquire(
    fd: int,
    mode: int,
    deadline: float,
    name: str,
    waiting: Waiting | None = None,
    what: str | None = None,
) -> None:
    delay = 0.001
    started = time.monotonic()
    told = False
    try:
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
            if not told:
                line = f"waiting for {_holders_text(fd)}, which holds lock {name}"
                line += f" ({what})" if what else ""
                log.info("%s", line)
                if waiting is not None:
                    waiting.start(line, None)
                told = True
            if time.monotonic() >= deadline:
                holder = _holders_text(fd)
                os.close(fd)
                raise LockTimeout(
                    f"timed out waiting for lock {name!r} after "
                    f"{time.monotonic() - started:.0f} s; it is held by {holder}",
                    hint="another vmdisk process is working on the same image; "
                    "try again later, or stop that process",
                    reason="lock-timeout",
                )
            time.sleep(delay)
            # A short cap while the wait is young: holders of a creator's lock (overlay
            # creation, a rename) finish in milliseconds. A wait for a fetch backs off further.
            delay = min(delay * 2, 0.005 if time.monotonic() - started < 1 else 0.1)
    finally:
        if told and waiting is not None:
            waiting.done()


def holders(fd: int) -> list[int]:
    """The pids holding a flock on fd's file, read from /proc/locks (empty if unknown)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
                    continue
                if fields[5] == inode and fields[4].isdigit():
                    pids.append(int(fields[4]))
    except OSError:
        return []
    return sorted(set(pids))


def _holders_text(fd: int) -> str:
    pids = holders(fd)
    if not pids:
        return "another process"
    return ("pid " if len(pids) == 1 else "pids ") + ", ".join(map(str, pids))


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)
