"""A tiny nested guest for the LVM tier: the guest's own kernel with a busybox initramfs whose
init loads the virtio and ext4 modules, prints what it sees on vda/vdb/vdc between markers on
the serial console, and powers off. Nothing else boots, so even TCG inside TCG is bearable.

The kernel is booted as the uncompressed ELF inside the bzImage (qemu starts it through its
PVH entry point): decompressing it is a third of the boot under TCG, much more nested.

What the init checks is what a booted instance would rely on: the root (vda) mounts as ext4
and holds the image's marker file, `findfs` finds the ephemeral disk by its label, and the
kernel accepts vdc as swap (`swapon`, then /proc/swaps).

    python3 nested.py OUT.cpio        # build it (uses busybox-static and /lib/modules)
"""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BEGIN, END = "VMDISK-NESTED-BEGIN", "VMDISK-NESTED-END"
MODULES = ("virtio_pci", "virtio_blk", "ext4")
CMDLINE = "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=3 mitigations=off"

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /mnt
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod "$m"; done
for i in $(seq 50); do [ -b /dev/vdc ] && break; sleep 0.2; done
echo {BEGIN}
echo "partitions: $(awk '$4 ~ /^vd/ {{printf "%s=%s ", $4, $3}}' /proc/partitions)"
echo "ephemeral: $(findfs LABEL=ephemeral0)"
swapon /dev/vdc && echo "swap: $(awk '$1 == "/dev/vdc" {{print $2}}' /proc/swaps)"
mount -t ext4 -o ro /dev/vda /mnt && echo "root: $(cat /mnt/marker.txt)"
echo {END}
poweroff -f
"""


def kernel_elf(bzimage: Path, out: Path) -> Path:
    """The vmlinux ELF an xz-compressed bzImage carries (Debian's kernels are; CONFIG_PVH=y
    lets qemu's -kernel start it directly)."""
    data = bzimage.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise ValueError(f"{bzimage}: no xz-compressed kernel inside")
    elf = lzma.LZMADecompressor().decompress(data[start:])
    if not elf.startswith(b"\x7fELF"):
        raise ValueError(f"{bzimage}: the xz payload is not an ELF kernel")
    out.write_bytes(elf)
    return out


def module_files(release: str, modules: tuple[str, ...] = MODULES) -> list[Path]:
    """The .ko files to insmod, dependencies first, each once (modprobe --show-depends)."""
    seen: list[Path] = []
    for name in modules:
        out = subprocess.run(
            ["modprobe", "--show-depends", "-S", release, name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.splitlines():
            parts = line.split()
            if parts[:1] == ["insmod"] and Path(parts[1]) not in seen:
                seen.append(Path(parts[1]))
    return seen


def build_initramfs(out: Path, release: str | None = None) -> Path:
    release = release or os.uname().release
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy2("/bin/busybox", root / "bin" / "busybox")
        (root / "m").mkdir()
        order = []
        for i, ko in enumerate(module_files(release)):
            target = root / "m" / f"{i:02d}-{ko.name}"
            shutil.copy2(ko, target)
            order.append(f"/m/{target.name}")
        (root / "modules.order").write_text("\n".join(order) + "\n")
        init = root / "init"
        init.write_text(INIT)
        init.chmod(0o755)
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        with open(out, "wb") as fh:
            subprocess.run(
                ["busybox", "cpio", "-o", "-H", "newc"],
                input=("\n".join(names) + "\n").encode(),
                cwd=root,
                stdout=fh,
                check=True,
            )
    return out


def between_markers(console: str) -> dict[str, str]:
    """The `key: value` lines the init printed between BEGIN and END."""
    if BEGIN not in console:
        return {}
    body = console.split(BEGIN, 1)[1].split(END, 1)[0]
    found = {}
    for line in body.splitlines():
        key, sep, value = line.strip().partition(": ")
        if sep:
            found[key] = value.strip()
    return found


if __name__ == "__main__":
    print(build_initramfs(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
