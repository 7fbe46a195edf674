"""File-system primitives: atomic writes, safe directories, sparse/reflink copies, probes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import mmap
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from vmdisk.errors import InsufficientSpace, InvalidRequest, VmdiskError
from vmdisk.units import format_size

FICLONE = 0x40049409
TEMP_MARK = ".part-"


def temp_name(final: Path) -> Path:
    """A temporary sibling of `final`: same directory, so the last step is one rename."""
    return final.with_name(f"{final.name}{TEMP_MARK}{secrets.token_hex(6)}")


def is_temp_name(name: str) -> bool:
    return TEMP_MARK in name


def open_exclusive(path: Path, mode: int = 0o600) -> int:
    """Create a new file; never follow a planted symlink or reuse an existing name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, mode)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, sync: bool = True) -> None:
    """Write `data` to `path` through a temporary name, fsync, and rename.

    sync=False leaves both fsyncs to a later `sync_file(path)`: for a caller holding a lock
    other processes wait on, which should not make them wait for the disk too.
    """
    tmp = temp_name(path)
    fd = open_exclusive(tmp, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if sync:
        fsync_dir(path.parent)


def sync_file(path: Path) -> None:
    """Make a file written with write_atomic(sync=False) durable: its data, then its name."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


@contextlib.contextmanager
def removing_on_error(*paths: Path) -> Iterator[None]:
    """Remove `paths` if the block raises anything, KeyboardInterrupt included."""
    try:
        yield
    except BaseException:
        for path in paths:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                path.unlink()
        raise


def ensure_real_dir(path: Path, mode: int = 0o755) -> Path:
    """Make `path` if missing and refuse it if it is a symlink or not a directory."""
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise InvalidRequest(f"{path} exists and is not a directory") from exc
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise InvalidRequest(
            f"{path} is a symlink; vmdisk refuses to work through one",
            reason="symlink",
            hint="point instances_path at the real directory instead",
        )
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidRequest(f"{path} is not a directory")
    return path


def regular_file_or_none(path: Path) -> os.stat_result | None:
    """lstat a cache entry: missing -> None; a symlink or special file is refused."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidRequest(
            f"{path} is not a regular file (a symlink or device was planted there)",
            reason="symlink",
            hint="remove it by hand after checking where it came from",
        )
    return st


def touch(path: Path) -> None:
    """Mark a base as used now. EACCES is tolerated as Nova does (read-only NFS exports)."""
    with contextlib.suppress(PermissionError):
        os.utime(path, follow_symlinks=False)


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def require_space(directory: Path, needed: int, what: str) -> None:
    """Say before starting that `what` cannot fit, instead of failing half-way."""
    free = free_bytes(directory)
    if needed > free:
        raise InsufficientSpace(
            f"not enough space in {directory} for {what}: "
            f"needs {format_size(needed)}, {format_size(free)} free",
            reason="insufficient-space",
            hint="free some space (vmdisk cache prune) or point instances_path elsewhere",
        )


def space_error(exc: OSError, directory: Path, what: str) -> VmdiskError | None:
    """Translate ENOSPC/EDQUOT into InsufficientSpace; None for any other error."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientSpace(
            f"ran out of space in {directory} while writing {what}",
            reason="insufficient-space",
            hint="free some space (vmdisk cache prune) and run the command again",
        )
    return None


@functools.cache
def direct_io_supported(directory: Path) -> bool:
    """Whether O_DIRECT works here (tmpfs says no): decides qemu-img's -t none/writeback."""
    probe = directory / f".directio.test.{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT | os.O_EXCL, 0o600)
    except OSError:
        return False
    try:
        buf = mmap.mmap(-1, 4096)
        os.write(fd, buf)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


@functools.cache
def fallocate_supported(directory: Path) -> bool:
    """Probe once per directory, as Nova probes once per backend class."""
    probe = directory / f".fallocate_test.{secrets.token_hex(4)}"
    fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, 1)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def preallocate(path: Path, size: int) -> None:
    """`fallocate -n -l SIZE`: reserve blocks without changing the apparent size."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        # FALLOC_FL_KEEP_SIZE = 1; os.posix_fallocate cannot keep the size.
        _fallocate_keep_size(fd, size)
    finally:
        os.close(fd)


def _fallocate_keep_size(fd: int, size: int) -> None:
    import ctypes  # here, not at the top: ctypes costs every command ~5 ms to import

    # The already-loaded C library: find_library("c") would run ldconfig on every call.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    if libc.fallocate(fd, 1, 0, size) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def reflink(src_fd: int, dst_fd: int) -> bool:
    """Make dst share src's extents (FICLONE: XFS with reflink=1, btrfs): milliseconds for
    any size, no space used until either side is written. False where the file system cannot
    (ext4: EOPNOTSUPP; across file systems: EXDEV); any other error is raised."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return True
    except OSError as exc:
        if exc.errno in _NO_REFLINK:
            return False
        raise


_NO_REFLINK = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}
)


def copy_sparse(src: Path, dst: Path) -> str:
    """Copy src to a new file dst: a reflink where the file system can, else only data extents
    with copy_file_range (in the kernel; no copy through user space).

    Returns "reflink" or "sparse" so callers can report what happened.
    """
    with open(src, "rb") as fin:
        fd = open_exclusive(dst, 0o644)
        try:
            if reflink(fin.fileno(), fd):
                return "reflink"
            size = os.fstat(fin.fileno()).st_size
            _copy_extents(fin.fileno(), fd, size)
            os.ftruncate(fd, size)
            return "sparse"
        finally:
            os.close(fd)


def _copy_extents(fin: int, fout: int, size: int) -> None:
    for start, end in data_extents(fin, 0, size):
        pos = start
        while pos < end:
            n = os.copy_file_range(fin, fout, end - pos, pos, pos)
            if n == 0:
                break
            pos += n


def data_extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The (start, end) data extents of `fd` between `start` and `end`: holes are skipped.

    The one SEEK_DATA/SEEK_HOLE walker: hashing, copying, streaming and RBD import read only
    the data, because reading a hole costs the kernel a zero-fill and a copy. A file system
    that cannot tell (EINVAL) has one extent, all data.
    """
    pos = start
    while pos < end:
        data = _seek(fd, pos, os.SEEK_DATA, end)
        if data >= end:
            return
        hole = min(_seek(fd, data, os.SEEK_HOLE, end), end)
        yield data, hole
        pos = hole


def _seek(fd: int, pos: int, whence: int, end: int) -> int:
    try:
        return os.lseek(fd, pos, whence)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no more data after pos
            return end
        if exc.errno == errno.EINVAL:  # the file system cannot tell: treat it all as data
            return pos if whence == os.SEEK_DATA else end
        raise
