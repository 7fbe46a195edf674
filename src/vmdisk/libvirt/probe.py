"""Does KVM work here? Decided by booting a Linux kernel, not by the presence of /dev/kvm.

On some hosts /dev/kvm exists but only runs special guests: qemu aborts with "failed to set
MSR", or the kernel's decompressor runs and then hangs. (A bare boot sector runs fine there,
so it is no probe.) We boot the host's own kernel under KVM with an early serial console and
wait a few seconds for "Linux version". The answer is cached per kernel release.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

from vmdisk.errors import ToolError
from vmdisk.fsutil import write_atomic
from vmdisk.tools.runner import Runner

PROBE_SECONDS = 6.0
BANNER = b"Linux version"


def virt_type(runner: Runner, setting: str, cache_dir: Path) -> str:
    """ "kvm" or "qemu" (TCG): the setting if it names one, else a cached or fresh probe."""
    if setting in ("kvm", "qemu"):
        return setting
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "qemu"
    kernel = probe_kernel()
    if kernel is None:
        return "qemu"
    cache = cache_dir / "virt-type.json"
    key = os.uname().release
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(cache.read_text())
        if data.get("kernel") == key and data.get("virt_type") in ("kvm", "qemu"):
            return str(data["virt_type"])
    found = "kvm" if kvm_boots(runner, kernel) else "qemu"
    with contextlib.suppress(OSError):  # an unwritable cache only costs the probe next time
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps({"kernel": key, "virt_type": found}).encode())
    return found


def probe_kernel() -> Path | None:
    own = Path(f"/boot/vmlinuz-{os.uname().release}")
    if own.is_file():
        return own
    return next(iter(sorted(Path("/boot").glob("vmlinuz-*"))), None)


def kvm_boots(runner: Runner, kernel: Path) -> bool:
    with tempfile.TemporaryDirectory(prefix="vmdisk-kvm-probe-") as tmp:
        serial = Path(tmp, "serial.log")
        argv = [
            "qemu-system-x86_64",
            "-accel",
            "kvm",
            "-machine",
            "pc",
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            str(kernel),
            "-append",
            "console=ttyS0 earlyprintk=serial,ttyS0",
            "-serial",
            f"file:{serial}",
        ]
        try:
            proc = runner.spawn(argv)
        except ToolError:
            return False
        deadline = time.monotonic() + PROBE_SECONDS
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if serial.exists() and BANNER in serial.read_bytes():
                    return True
                time.sleep(0.1)
            return False
        finally:
            proc.stop()
