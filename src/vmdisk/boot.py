"""`vmdisk boot`: start what vmdisk built, under qemu directly or through libvirt, and watch it.

Both ways derive from the same Domain as libvirt.xml. The guest's serial console is appended to
the instance's console.log; we follow that file, stream it, and stop at poweroff, at the
wait-for text, or at the timeout (then the guest is stopped).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmdisk.errors import BackendError, ToolError
from vmdisk.libvirt.domain import DiskDevice, Domain, render
from vmdisk.model import BlockSource, NetworkSource
from vmdisk.tools.runner import Runner

POLL = 0.1
Stream = Callable[[bytes], None]


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


def _opt(value: str | Path) -> str:
    """qemu option values double their commas."""
    return str(value).replace(",", ",,")


def qemu_argv(domain: Domain) -> list[str]:
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
    argv += [
        "-chardev",
        f"file,id=console0,path={_opt(domain.console_log)},append=on",
        "-serial",
        "chardev:console0",
    ]
    if domain.kernel is not None:
        argv += ["-kernel", str(domain.kernel)]
        if domain.initrd is not None:
            argv += ["-initrd", str(domain.initrd)]
        argv += ["-append", domain.cmdline or "root=/dev/vda console=ttyS0"]
    if domain.interface is not None:
        if domain.interface.kind == "bridge":
            argv += ["-netdev", f"bridge,id=net0,br={domain.interface.bridge}"]
        else:
            argv += ["-netdev", "user,id=net0"]
        argv += ["-device", "virtio-net-pci,netdev=net0"]
    argv += ["-device", "virtio-balloon-pci"]
    return argv


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
    if reason != "poweroff":
        stop()
    follower.pump()
    return BootResult(via, reason, time.monotonic() - start, follower.text)


def boot_qemu(
    runner: Runner, domain: Domain, *, timeout: float, wait_for: str | None, stream: Stream | None
) -> BootResult:
    follower = ConsoleFollower(domain.console_log, stream)
    with tempfile.NamedTemporaryFile(prefix="vmdisk-qemu-", suffix=".log", delete=False) as log:
        output = Path(log.name)
    try:
        proc = runner.spawn(qemu_argv(domain), output=output)
        result = watch(
            follower,
            lambda: proc.poll() is None,
            proc.stop,
            timeout=timeout,
            wait_for=wait_for,
            via="qemu",
        )
        if result.reason == "poweroff" and proc.wait() != 0:
            raise BackendError(
                f"qemu exited with {proc.wait()}: {_tail(output)}", reason="qemu-failed"
            )
        return result
    finally:
        output.unlink(missing_ok=True)


def _tail(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


class Virsh:
    """The few virsh verbs boot needs, with libvirt's connection errors made clear."""

    def __init__(self, runner: Runner, uri: str) -> None:
        self.runner = runner
        self.uri = uri

    def __call__(self, *args: str, check: bool = True) -> str:
        try:
            result = self.runner.run(["virsh", "-c", self.uri, *args], timeout=120, check=check)
        except ToolError as exc:
            if "connect" in exc.stderr.lower() or "socket" in exc.stderr.lower():
                raise BackendError(
                    f"cannot connect to libvirt at {self.uri}: is libvirtd running?",
                    reason="libvirt-unavailable",
                    hint="start it (systemctl start libvirtd, or virtlogd -d; libvirtd -d)",
                ) from exc
            raise
        return result.text.strip()


def boot_libvirt(
    runner: Runner,
    domain: Domain,
    *,
    uri: str,
    timeout: float,
    wait_for: str | None,
    keep: bool,
    stream: Stream | None,
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
            virsh("destroy", domain.name, check=False)

        return watch(follower, running, stop, timeout=timeout, wait_for=wait_for, via="libvirt")
    finally:
        if not keep:
            virsh("destroy", domain.name, check=False)
            virsh("undefine", domain.name, check=False)
