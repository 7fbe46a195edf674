"""`vmdisk boot`: start what vmdisk built, under qemu directly or through libvirt, and watch it.

Both ways derive from the same Domain as libvirt.xml. The guest's serial console is appended to
the instance's console.log; we follow that file, stream it, and stop at poweroff, at the
wait-for text, or at the timeout. A guest still running then is stopped the way a user would:
the ACPI power button (QMP system_powerdown, `virsh shutdown`), and only after STOP_GRACE
seconds without a poweroff is it killed, so its file systems are clean.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmdisk.errors import BackendError, GuestTimeout, VmdiskError
from vmdisk.libvirt.domain import DiskDevice, Domain, NicDevice, render
from vmdisk.libvirt.virsh import Virsh
from vmdisk.model import BlockSource, NetworkSource
from vmdisk.qmp import Qmp
from vmdisk.tools.runner import Runner

POLL = 0.1
STOP_GRACE = 90.0  # seconds a guest gets to power off after the ACPI button (TCG is slow)
Stream = Callable[[bytes], None]

__all__ = ["BootResult", "ConsoleFollower", "QemuControl", "Stream", "Virsh", "qemu_argv"]


@dataclass(frozen=True, slots=True)
class QemuControl:
    """The files a qemu we start carries besides its disks: a QMP socket, and for a detached
    qemu (`vmdisk start --via qemu`) a pidfile and an interactive console socket."""

    qmp: Path
    pidfile: Path | None = None
    console_socket: Path | None = None
    daemonize: bool = False


@dataclass(frozen=True, slots=True)
class BootResult:
    via: str
    reason: str  # "poweroff", "wait-for" or "timeout"
    duration: float
    console: str  # what the guest printed during this boot

    def to_dict(self) -> dict[str, object]:
        return {
            "via": self.via,
            "reason": self.reason,
            "duration": round(self.duration, 2),
            "console": self.console,
        }

    def check(self, wait_for: str | None) -> BootResult:
        """The smoke test's verdict: a timeout, or a poweroff before `wait_for` showed, fails."""
        if self.reason == "timeout":
            shown = f" without seeing {wait_for!r}" if wait_for else " without a poweroff"
            raise GuestTimeout(
                f"boot timed out after {self.duration:.0f} s{shown} (via {self.via})",
                reason="timeout",
            )
        if wait_for is not None and self.reason != "wait-for":
            raise GuestTimeout(
                f"the guest powered off after {self.duration:.0f} s; {wait_for!r} never showed",
                reason="wait-for-not-seen",
            )
        return self


def _opt(value: str | Path) -> str:
    """qemu option values double their commas."""
    return str(value).replace(",", ",,")


def qemu_argv(domain: Domain, control: QemuControl | None = None) -> list[str]:
    accel = "kvm" if domain.virt_type == "kvm" else "tcg"
    argv = [
        "qemu-system-x86_64",
        "-name",
        domain.name,
        "-uuid",
        domain.uuid,
        "-machine",
        f"{domain.machine},accel={accel}",
        "-m",
        str(domain.memory_mb),
        "-smp",
        str(domain.vcpus),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]
    if accel == "kvm":
        argv += ["-cpu", "host"]
    for disk in domain.disks:
        argv += ["-drive", _drive(domain, disk)]
    argv += ["-chardev", _console(domain, control), "-serial", "chardev:console0"]
    if control is not None:
        argv += ["-qmp", f"unix:{_opt(control.qmp)},server=on,wait=off"]
        if control.pidfile is not None:
            argv += ["-pidfile", str(control.pidfile)]
        if control.daemonize:
            argv += ["-daemonize"]
    if domain.kernel is not None:
        argv += ["-kernel", str(domain.kernel)]
        if domain.initrd is not None:
            argv += ["-initrd", str(domain.initrd)]
        argv += ["-append", domain.cmdline or "root=/dev/vda console=ttyS0"]
    if domain.nic is not None:
        argv += _nic(domain.nic)
    argv += ["-device", "virtio-balloon-pci"]
    return argv


def _console(domain: Domain, control: QemuControl | None) -> str:
    """ttyS0 into console.log; a detached qemu also serves it on a socket to attach to."""
    log = _opt(domain.console_log)
    if control is not None and control.console_socket is not None:
        sock = _opt(control.console_socket)
        return f"socket,id=console0,path={sock},server=on,wait=off,logfile={log},logappend=on"
    return f"file,id=console0,path={log},append=on"


NIC_MODELS = {"virtio": "virtio-net-pci"}


def _nic(nic: NicDevice) -> list[str]:
    """The MAC is the one the drive's network data names, so cloud-init configures this NIC."""
    if nic.kind == "bridge":
        netdev = f"bridge,id=net0,br={nic.source}"
    elif nic.kind == "user":
        netdev = "user,id=net0"
        if nic.ssh_port is not None:
            netdev += f",hostfwd=tcp:127.0.0.1:{nic.ssh_port}-:22"
    else:
        raise BackendError(
            f"qemu cannot join the libvirt network {nic.source!r}", reason="not-supported"
        )
    device = f"{NIC_MODELS.get(nic.model, nic.model)},netdev=net0,mac={nic.mac}"
    return ["-netdev", netdev, "-device", device]


def _drive(domain: Domain, disk: DiskDevice) -> str:
    src = disk.source
    if isinstance(src, NetworkSource):
        # qemu's own protocol syntax (`rbd:pool/image:conf=...:id=...`), not libvirt's hosts.
        source = f"{src.protocol}:{src.name}"
        if src.conf is not None:
            source += f":conf={src.conf}"
        if src.auth is not None:
            source += f":id={src.auth.username}"
    elif isinstance(src, BlockSource):
        source = str(src.device)
    else:
        source = str(src.path)
    spec = f"file={_opt(source)},format={disk.driver_type},cache={disk.cache}"
    if disk.device == "cdrom":
        spec += ",if=ide,media=cdrom,readonly=on"
    else:
        spec += f",if={disk.bus}"
    if disk.io:
        spec += f",aio={disk.io}"
    return spec


class ConsoleFollower:
    """Reads what a guest appends to console.log after the boot began."""

    def __init__(self, path: Path, stream: Stream | None) -> None:
        self.path = path
        self.stream = stream
        self.offset = path.stat().st_size if path.exists() else 0
        self.seen = bytearray()

    def pump(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        if data:
            self.offset += len(data)
            self.seen += data
            if self.stream is not None:
                self.stream(data)

    def contains(self, text: str | None) -> bool:
        return text is not None and text.encode() in self.seen

    @property
    def text(self) -> str:
        return self.seen.decode("utf-8", "replace")


def watch(
    follower: ConsoleFollower,
    running: Callable[[], bool],
    stop: Callable[[], None],
    *,
    timeout: float,
    wait_for: str | None,
    via: str,
) -> BootResult:
    start = time.monotonic()
    reason = "timeout"
    while time.monotonic() - start < timeout:
        follower.pump()
        if follower.contains(wait_for):
            reason = "wait-for"
            break
        if not running():
            reason = "poweroff"
            break
        time.sleep(POLL)
    duration = time.monotonic() - start
    if reason != "poweroff":
        stop()
    follower.pump()
    return BootResult(via, reason, duration, follower.text)


def stop_gracefully(
    powerdown: Callable[[], object],
    running: Callable[[], bool],
    kill: Callable[[], object],
    grace: float = STOP_GRACE,
) -> bool:
    """Press the power button, wait up to `grace` s for the guest to go; else kill it.
    True when the guest powered off by itself (its file systems are clean)."""
    with contextlib.suppress(VmdiskError):  # a guest that just went cannot take the button
        powerdown()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not running():
            return True
        time.sleep(0.5)
    kill()
    return False


def boot_qemu(
    runner: Runner,
    domain: Domain,
    *,
    timeout: float,
    wait_for: str | None,
    stream: Stream | None,
    grace: float = STOP_GRACE,
) -> BootResult:
    follower = ConsoleFollower(domain.console_log, stream)
    # A short private directory: unix socket paths are limited to 108 bytes.
    control_dir = Path(tempfile.mkdtemp(prefix="vmdisk-boot-"))
    output = control_dir / "qemu.log"
    control = QemuControl(qmp=control_dir / "qmp.sock")
    try:
        proc = runner.spawn(qemu_argv(domain, control), output=output)

        def running() -> bool:
            return proc.poll() is None

        def powerdown() -> None:
            with Qmp(control.qmp) as qmp:
                qmp.execute("system_powerdown")

        def stop() -> None:
            stop_gracefully(powerdown, running, proc.stop, grace)

        result = watch(follower, running, stop, timeout=timeout, wait_for=wait_for, via="qemu")
        if result.reason == "poweroff" and proc.wait() != 0:
            raise BackendError(
                f"qemu exited with {proc.wait()}: {_tail(output)}", reason="qemu-failed"
            )
        return result
    finally:
        shutil.rmtree(control_dir, ignore_errors=True)


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "no output"
    return lines[-1] if lines else "no output"


def boot_libvirt(
    runner: Runner,
    domain: Domain,
    *,
    uri: str,
    timeout: float,
    wait_for: str | None,
    keep: bool,
    stream: Stream | None,
    grace: float = STOP_GRACE,
) -> BootResult:
    virsh = Virsh(runner, uri)
    follower = ConsoleFollower(domain.console_log, stream)
    with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="vmdisk-") as xml:
        xml.write(render(domain))
        xml.flush()
        virsh("define", xml.name)
    try:
        virsh("start", domain.name)

        def running() -> bool:
            return virsh("domstate", domain.name, check=False) == "running"

        def stop() -> None:
            stop_gracefully(
                lambda: virsh("shutdown", domain.name),
                running,
                lambda: virsh("destroy", domain.name, check=False),
                grace,
            )

        return watch(follower, running, stop, timeout=timeout, wait_for=wait_for, via="libvirt")
    finally:
        if not keep:
            virsh("destroy", domain.name, check=False)
            virsh("undefine", domain.name, check=False)
