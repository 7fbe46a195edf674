"""A tiny real guest: Debian's kernel plus a busybox initramfs whose /init proves every disk.

/init loads virtio, ext4, isofs and IDE cdrom modules (copied from /lib/modules in dependency
order), mounts the root disk and prints its marker, finds LABEL=ephemeral0 and mounts it,
turns on swap, prints openstack/latest/meta_data.json from LABEL=config-2, writes a file into
the root disk, and powers off. Each step prints a line the tests look for in console.log.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

WANTED = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic", "isofs", "ata_piix", "sr_mod")
GUEST_FILE = "/from-guest.txt"
GUEST_TEXT = "written by the vmdisk test guest"

INIT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /mnt/root /mnt/eph /mnt/cd /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.list); do insmod /lib/modules/$m.ko || echo "GUEST: insmod $m failed"; done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.5; done
echo "GUEST: up, disks: $(ls /dev | grep -E '^(vd|sr)' | tr '\\n' ' ')"
if mount -t ext4 /dev/vda /mnt/root; then
  echo "GUEST: marker $(cat /mnt/root/marker.txt)"
fi
EPH=$(findfs LABEL=ephemeral0) && mount -t ext4 "$EPH" /mnt/eph && echo "GUEST: ephemeral0 on $EPH"
for d in /dev/vd?; do swapon "$d" 2>/dev/null && echo "GUEST: swap on $d"; done
grep -q /dev /proc/swaps && echo "GUEST: swaps $(grep -c /dev /proc/swaps)"
for i in 1 2 3 4 5 6; do CD=$(findfs LABEL=config-2) && break; sleep 0.5; done
if [ -n "$CD" ] && mount -t iso9660 -o ro "$CD" /mnt/cd; then
  META=$(tr -d '\\n' < /mnt/cd/openstack/latest/meta_data.json | sed 's/"admin_pass": "[^"]*", //')
  echo "GUEST: meta_data $META"
fi
if grep -q ' /mnt/root ' /proc/mounts; then
  echo "{GUEST_TEXT}" > /mnt/root{GUEST_FILE}
  umount /mnt/root && echo "GUEST: root written and unmounted"
fi
sync
echo "GUEST: done"
poweroff -f
"""


@dataclass(frozen=True, slots=True)
class Guest:
    kernel: Path
    initrd: Path


def kernel_release() -> str:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        raise FileNotFoundError("no kernel in /boot: apt-get install linux-image-amd64")
    return kernels[-1].name.removeprefix("vmlinuz-")


def module_order(release: str) -> list[Path]:
    """The wanted modules and their dependencies, dependencies first."""
    root = Path("/lib/modules") / release
    deps: dict[str, list[str]] = {}
    for line in (root / "modules.dep").read_text().splitlines():
        module, _, rest = line.partition(":")
        deps[module] = rest.split()
    by_name = {Path(m).name.split(".ko")[0].replace("-", "_"): m for m in deps}
    ordered: list[str] = []

    def visit(module: str) -> None:
        for dep in deps.get(module, []):
            visit(dep)
        if module not in ordered:
            ordered.append(module)

    for name in WANTED:
        if name in by_name:
            visit(by_name[name])
    return [root / m for m in ordered]


def build_guest(workdir: Path) -> Guest:
    release = kernel_release()
    tree = workdir / "initramfs"
    (tree / "bin").mkdir(parents=True)
    (tree / "lib/modules").mkdir(parents=True)
    shutil.copy2("/bin/busybox", tree / "bin/busybox")
    names = []
    for module in module_order(release):
        name = module.name.split(".ko")[0]
        if module.name.endswith(".ko"):
            shutil.copy2(module, tree / "lib/modules" / f"{name}.ko")
        else:
            raise RuntimeError(f"compressed module {module} is not supported by this helper")
        names.append(name)
    (tree / "modules.list").write_text("\n".join(names) + "\n")
    init = tree / "init"
    init.write_text(INIT)
    init.chmod(0o755)
    initrd = workdir / "initrd.cpio"
    files = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
    with open(initrd, "wb") as out:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=files, stdout=out, check=True
        )
    kernel = workdir / "vmlinuz"
    shutil.copy2(f"/boot/vmlinuz-{release}", kernel)
    return Guest(kernel, initrd)


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    built = build_guest(target)
    print(f"kernel {built.kernel}\ninitrd {built.initrd}")
