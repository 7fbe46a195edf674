"""Files a user hands in (user data, ssh keys, network data, injected files): read safely.

A path such as `/dev/zero` or a FIFO must never be read whole: the file is opened without
blocking, must be a regular file, and its size is checked against the limit from `fstat`
before a byte is read; the read itself stops one byte past the limit, so a file that grows
while we read cannot get past it either.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vmdisk.errors import InvalidRequest

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_user_file(path: Path, limit: int, what: str) -> bytes:
    """The whole content of a regular file of at most `limit` bytes, or InvalidRequest (exit 2).

    O_NONBLOCK keeps the open of a FIFO from waiting for a writer; it changes nothing for a
    regular file. Symlinks are followed: the user named the file, and it is only read.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InvalidRequest(
            f"cannot read {what} {path}: {exc.strerror}", reason="unreadable"
        ) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidRequest(
                f"{what} {path} is {file_kind(st.st_mode)}, not a regular file",
                reason="not-a-file",
            )
        if st.st_size > limit:
            raise _too_large(path, what, st.st_size, limit)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise _too_large(path, what, None, limit)  # it grew while we read
        return b"".join(chunks)
    finally:
        os.close(fd)


def _too_large(path: Path, what: str, size: int | None, limit: int) -> InvalidRequest:
    shown = f"{size} bytes" if size is not None else f"over {limit} bytes"
    return InvalidRequest(
        f"{what} {path} is {shown}; the limit is {limit} bytes", reason="too-large"
    )
