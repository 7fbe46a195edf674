"""File injection into the root disk (Nova's inject_* options), through libguestfs.

Off by default (`[libvirt] inject_partition = -2`), as in Nova since OSSA 2012-008. Every write
happens inside the libguestfs appliance, whose daemon works in the guest's own root: a symlink
in the guest image resolves within the guest and can never reach a host file. Guest paths are
still refused if they are relative or contain `..`. Only the instance's overlay is opened,
read-write, with its format given; the base behind it is never written.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmdisk.errors import BackendError, InvalidRequest, ToolNotFound
from vmdisk.settings import LibvirtSettings
from vmdisk.tools.runner import Runner, Secret

INSPECT = -1
WHOLE_DISK = 0
DISABLED = -2


@dataclass(frozen=True, slots=True)
class Injection:
    """What to write into the guest's root file system before its first boot."""

    partition: int
    keys: tuple[str, ...] = ()
    password: str | None = None
    files: tuple[tuple[str, bytes], ...] = ()
    network: bytes | None = None

    @property
    def empty(self) -> bool:
        return not (self.keys or self.password or self.files or self.network)


def guest_path(text: str) -> str:
    """An absolute, normalised guest path without `..`, empty components or NUL."""
    parts = text.split("/")
    if (
        not text.startswith("/")
        or ".." in parts
        or "" in parts[1:]
        or "\x00" in text
        or posixpath.normpath(text) != text
    ):
        raise InvalidRequest(
            f"guest path {text!r} must be absolute and normalised, without '..'",
            reason="bad-guest-path",
        )
    return text


def require_injection(libvirt: LibvirtSettings, *, keys: bool, password: bool) -> None:
    """The operator's inject_* switches, checked before anything is read or started."""
    if libvirt.inject_partition == DISABLED:
        raise InvalidRequest(
            "file injection is off ([libvirt] inject_partition = -2)",
            reason="injection-off",
            hint="use --config-drive, or set [libvirt] inject_partition (-1 to inspect)",
        )
    if keys and not libvirt.inject_key:
        raise InvalidRequest(
            "key injection is off ([libvirt] inject_key = false)",
            reason="injection-off",
            hint="use --config-drive or inject_key",
        )
    if password and not libvirt.inject_password:
        raise InvalidRequest(
            "password injection is off ([libvirt] inject_password = false)",
            reason="injection-off",
            hint="use --config-drive or inject_password",
        )


def check_injection_policy(injection: Injection | None, libvirt: LibvirtSettings) -> None:
    """Refuse an injection the operator did not allow, whoever built it (CLI or Python API).

    Host.plan and Host.create_instance call this before any tool runs, so a caller passing an
    InstanceSpec with an Injection cannot get past `[libvirt] inject_partition = -2`.
    """
    if injection is None or injection.empty:
        return
    require_injection(libvirt, keys=bool(injection.keys), password=bool(injection.password))
    if injection.partition < INSPECT:
        raise InvalidRequest(
            f"injection partition {injection.partition} is not -1, 0 or a partition number",
            reason="bad-option",
        )
    for path, _ in injection.files:
        guest_path(path)


def _guestfs() -> Any:
    try:
        import guestfs
    except ImportError as exc:
        raise ToolNotFound(
            "libguestfs is not installed (its Python bindings are missing)",
            hint="apt-get install -y libguestfs-tools python3-guestfs",
            reason="tool-not-found",
        ) from exc
    return guestfs


def password_hash(runner: Runner, password: str) -> str:
    """SHA-512 crypt, computed by openssl with the password on stdin (never in argv)."""
    result = runner.run(["openssl", "passwd", "-6", "-stdin"], input=password.encode() + b"\n")
    return result.text.strip()


def inject(disk: Path, fmt: str, injection: Injection, runner: Runner, *, tcg: bool) -> None:
    """Write the injection into `disk` (an instance's own overlay or flat copy)."""
    for path, _ in injection.files:
        guest_path(path)
    hashed = password_hash(runner, injection.password) if injection.password else None
    g = _launch(disk, fmt, tcg)
    try:
        _mount_root(g, injection.partition)
        if injection.keys:
            _authorized_keys(g, injection.keys)
        if hashed:
            _set_root_password(g, Secret(hashed))
        for path, content in injection.files:
            _write(g, path, content)
        if injection.network is not None:
            _write(g, "/etc/network/interfaces", injection.network)
        g.sync()
        g.umount_all()
        g.shutdown()
    except RuntimeError as exc:
        raise BackendError(
            f"file injection into {disk.name} failed: {exc}", reason="injection-failed"
        ) from exc
    finally:
        g.close()


def _launch(disk: Path, fmt: str, tcg: bool) -> Any:
    guestfs = _guestfs()
    if tcg:  # /dev/kvm may exist without working; the appliance then aborts (platform notes)
        os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend("direct")
    g.add_drive_opts(str(disk), format=fmt, readonly=False)
    try:
        g.launch()
    except RuntimeError as exc:
        g.close()
        raise BackendError(
            f"the libguestfs appliance did not start: {exc}",
            reason="appliance-failed",
            hint="run libguestfs-test-tool (LIBGUESTFS_BACKEND=direct) to see why",
        ) from exc
    return g


def _mount_root(g: Any, partition: int) -> None:
    if partition == INSPECT:
        roots = g.inspect_os()
        if not roots:
            raise BackendError(
                "no operating system found in the root disk to inject into", reason="no-filesystem"
            )
        mounts = g.inspect_get_mountpoints(roots[0])
        for mountpoint in sorted(mounts, key=len):
            g.mount(mounts[mountpoint], mountpoint)
        return
    device = "/dev/sda" if partition == WHOLE_DISK else f"/dev/sda{partition}"
    filesystems = g.list_filesystems()
    kind = filesystems.get(device)
    if kind in (None, "unknown", "swap"):
        raise BackendError(
            f"no file system on {'the whole disk' if partition == 0 else device}"
            f" (found: {kind or 'nothing'})",
            reason="no-filesystem",
            hint="set [libvirt] inject_partition to the root partition, or -1",
        )
    g.mount(device, "/")
    if not g.is_dir("/etc"):
        raise BackendError(
            f"{device} holds {kind}, but no /etc: not a root file system", reason="no-filesystem"
        )


def _mkdir_inside(g: Any, directory: str) -> str:
    """Create `directory` in the guest; links are resolved by the guest's own root."""
    if not g.is_dir(directory, followsymlinks=True):
        g.mkdir_p(directory)
    return str(g.realpath(directory))


def _authorized_keys(g: Any, keys: tuple[str, ...]) -> None:
    ssh = _mkdir_inside(g, "/root/.ssh")
    g.chmod(0o700, ssh)
    path = f"{ssh}/authorized_keys"
    existing = g.read_file(path) if g.is_file(path) else b""
    lines = [k.strip() for k in keys if k.strip().encode() not in existing]
    data = existing + b"".join((line + "\n").encode() for line in lines)
    if existing and not existing.endswith(b"\n"):
        data = existing + b"\n" + data[len(existing) :]
    g.write(path, data)
    g.chmod(0o600, path)
    g.chown(0, 0, path)
    g.chown(0, 0, ssh)


def _set_root_password(g: Any, hashed: str) -> None:
    if not g.is_file("/etc/shadow"):
        raise BackendError("the guest has no /etc/shadow to set a password in", reason="no-shadow")
    lines = g.read_file("/etc/shadow").decode().splitlines()
    found = False
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 1:
            fields[1] = hashed
            lines[i] = ":".join(fields)
            found = True
    if not found:
        lines.append(f"root:{hashed}:19000:0:99999:7:::")
    g.write("/etc/shadow", ("\n".join(lines) + "\n").encode())
    g.chmod(0o640, "/etc/shadow")


def _write(g: Any, path: str, content: bytes) -> None:
    parent = _mkdir_inside(g, posixpath.dirname(path) or "/")
    g.write(posixpath.join(parent, posixpath.basename(path)), content)
