"""The only place vmdisk starts a process: argv lists, LC_ALL=C, timeouts, resource limits.

Limits are applied in the child with setrlimit before exec, not through a prlimit wrapper
process (Nova's wrapper costs ~40 ms a call). Every call is counted so benchmarks can report
subprocesses per operation.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vmdisk.errors import (
    InsufficientSpace,
    ToolError,
    ToolLimitExceeded,
    ToolNotFound,
    VmdiskError,
)

log = logging.getLogger(__name__)

#: Which Debian package brings each executable we call, for ToolNotFound's hint.
PACKAGES: Mapping[str, str] = {
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "mkfs": "util-linux",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.ext3": "e2fsprogs",
    "mkfs.ext2": "e2fsprogs",
    "mkfs.xfs": "xfsprogs",
    "mkfs.vfat": "dosfstools",
    "mkfs.ntfs": "ntfs-3g",
    "mkswap": "util-linux",
    "fallocate": "util-linux",
    "cp": "coreutils",
    "mcopy": "mtools",
    "mmd": "mtools",
    "xorriso": "xorriso",
    "genisoimage": "genisoimage",
    "virsh": "libvirt-clients",
    "virt-xml-validate": "libvirt-clients",
    **dict.fromkeys(
        ("lvcreate", "lvs", "vgs", "lvextend", "lvremove", "lvrename", "lvchange"), "lvm2"
    ),
    "blkdiscard": "util-linux",
    "shred": "coreutils",
}


class Secret(str):
    """A string argument that must never be printed (passwords, keys, URL credentials)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'****'"


def redact(argv: Sequence[str]) -> list[str]:
    return ["****" if isinstance(arg, Secret) else str(arg) for arg in argv]


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits for a child that parses untrusted bytes (CVE-2015-5162)."""

    address_space: int | None = None
    cpu_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    duration: float

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


class Running(Protocol):
    """A started process: a guest's qemu, or a probe we may have to kill."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def stop(self) -> None: ...


class Runner(Protocol):
    """The seam every tool wrapper is built on; tests give a typed fake."""

    calls: int

    def spawn(self, argv: Sequence[str], *, output: Path | None = None) -> Running: ...

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        limits: Limits | None = None,
        check: bool = True,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult: ...


def _tail(data: bytes, lines: int = 6) -> str:
    return "\n".join(data.decode("utf-8", "replace").strip().splitlines()[-lines:])


class SubprocessRunner:
    """Runs real processes. Thread-safe; `calls` counts every process started."""

    def __init__(self, default_timeout: float = 3600.0) -> None:
        self.default_timeout = default_timeout
        self.calls = 0
        self._lock = threading.Lock()
        self._which: dict[str, str] = {}

    def _resolve(self, name: str) -> str:
        if "/" in name:
            return name
        found = self._which.get(name) or shutil.which(name, path=_search_path())
        if not found:
            package = PACKAGES.get(name, name)
            raise ToolNotFound(
                f"{name} is not installed",
                argv=[name],
                hint=f"install it with: apt-get install -y {package}",
                reason="tool-not-found",
            )
        self._which[name] = found
        return found

    def spawn(self, argv: Sequence[str], *, output: Path | None = None) -> Running:
        """Start a long-running process (qemu); its stdout and stderr go to `output`."""
        exe = self._resolve(str(argv[0]))
        with self._lock:
            self.calls += 1
        sink = open(output, "ab") if output else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [exe, *map(str, argv[1:])],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, "LC_ALL": "C", "LANG": "C"},
                start_new_session=True,  # a Ctrl-C at the terminal is ours to handle, not qemu's
            )
        finally:
            if output:
                sink.close()  # type: ignore[union-attr]
        log.debug("started %s as pid %d", " ".join(redact(argv)), proc.pid)
        return _Process(proc)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        limits: Limits | None = None,
        check: bool = True,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        shown = redact(argv)
        exe = self._resolve(str(argv[0]))
        child_env = {**os.environ, **(env or {}), "LC_ALL": "C", "LANG": "C"}
        timeout = self.default_timeout if timeout is None else timeout
        with self._lock:
            self.calls += 1
        start = time.monotonic()
        try:
            proc = subprocess.run(
                [exe, *map(str, argv[1:])],
                input=input,
                capture_output=True,
                timeout=timeout,
                env=child_env,
                preexec_fn=_limiter(limits) if limits else None,
                stdin=None if input is not None else subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ToolLimitExceeded(
                f"{argv[0]} did not finish within {timeout:.0f} s",
                argv=shown,
                stderr=_tail(exc.stderr or b""),
                reason="timeout",
            ) from exc
        result = CommandResult(
            tuple(shown), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start
        )
        log.debug("ran %s -> %d in %.3fs", " ".join(shown), proc.returncode, result.duration)
        if check and proc.returncode != 0:
            raise _failure(result, limits)
        return result


class _Process:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self.pid = proc.pid

    def poll(self) -> int | None:
        return self._proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self._proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not gone within 5 s."""
        if self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _failure(result: CommandResult, limits: Limits | None) -> VmdiskError:
    rc = result.returncode
    stderr = _tail(result.stderr)
    if "No space left on device" in stderr or "Disk quota exceeded" in stderr:
        return InsufficientSpace(
            f"{result.argv[0]} ran out of space: {stderr.splitlines()[-1]}",
            reason="insufficient-space",
            hint="free some space (vmdisk cache prune) and run the command again",
        )
    killed_by = {-signal.SIGKILL: "SIGKILL", -signal.SIGXCPU: "SIGXCPU", -signal.SIGSEGV: "SIGSEGV"}
    # Under an address-space limit the loader itself may fail to map a library.
    out_of_memory = "Cannot allocate memory" in stderr or "failed to map segment" in stderr
    if limits and (rc in killed_by or out_of_memory):
        return ToolLimitExceeded(
            f"{result.argv[0]} exceeded its resource limits "
            f"(address space {limits.address_space} bytes, cpu {limits.cpu_seconds} s)",
            argv=result.argv,
            returncode=rc,
            stderr=stderr,
            reason="resource-limit",
        )
    detail = stderr.splitlines()[-1] if stderr else f"exit code {rc}"
    return ToolError(
        f"{result.argv[0]} failed: {detail}",
        argv=result.argv,
        returncode=rc,
        stderr=stderr,
        reason="tool-failed",
    )


PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child must not dlopen after fork


def _limiter(limits: Limits) -> Callable[[], None]:
    parent = os.getpid()

    def apply() -> None:  # runs in the child between fork and exec
        # Die with the parent: a SIGKILLed fetch must not leave a qemu-img converting into
        # _base while the next fetch converts again. If the parent already died before the
        # prctl, the signal will never come: exit now.
        if os.getpid() != parent:  # in the forked child (never in the caller itself)
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:
                os._exit(1)
        if limits.address_space:
            resource.setrlimit(resource.RLIMIT_AS, (limits.address_space, limits.address_space))
        if limits.cpu_seconds:
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))

    return apply


def _search_path() -> str:
    # Debian keeps mkfs, mkswap and friends in /usr/sbin, which a user's PATH may lack.
    path = os.environ.get("PATH", "")
    extra = [p for p in ("/usr/sbin", "/sbin") if p not in path.split(os.pathsep)]
    return os.pathsep.join([path, *extra]) if path else os.pathsep.join(extra)


def which(name: str) -> Path | None:
    found = shutil.which(name, path=_search_path())
    return Path(found) if found else None
