"""A real Debian bookworm guest for slow end-to-end tests, built once and cached.

    image = debian.get_image()          # builds on first use, then returns the cached artifact
    guest = debian.boot(image, workdir, seed=debian.make_seed_iso(...))
    guest.wait_for_ssh(key)
    guest.ssh(key, "lvm version")

The image is a debootstrap (variant minbase) tree turned into a disk without device-mapper or
loop mounts on the host: ``mkfs.ext4 -d TREE`` fills a raw file holding a bare file system (no
partition table, the guest mounts ``/dev/vda`` as root), and ``qemu-img convert -c`` makes the
compressed qcow2 that is cached. The guest boots the host's own kernel and initrd
(``-kernel``/``-initrd``); the host's /lib/modules for that kernel is copied into the tree, so
dm-mod, dm-thin-pool and the rest load inside the guest even though the host has no
device-mapper.

The cache lives in ``$VMDISK_TEST_CACHE`` (default /var/cache/vmdisk-tests), one directory per
recipe hash: changing the recipe below (packages, files, masked units, the build code, the
kernel release) builds a new image. A build happens under a lock in a temporary directory that
is renamed into place, so two test processes never build twice nor see half an image.

The package mirror is never written here: it comes from the machine's own apt configuration
(the URI serving bookworm main), or ``$VMDISK_DEBIAN_MIRROR``.

Run ``python -m tests.guests.debian build [--cache DIR]`` to build (or find) it by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "bookworm"
DEFAULT_CACHE = Path("/var/cache/vmdisk-tests")
DISK_NAME = "disk.qcow2"
ROOT_SIZE = 3 * 1024**3  # virtual size of the root file system; cloud-init grows it to the disk

PACKAGES: tuple[str, ...] = (
    "systemd-sysv",
    "udev",
    "dbus",  # systemd-logind needs it: the ACPI power button (graceful stop) goes through logind
    "kmod",
    "cloud-init",
    "python3-cffi-backend",  # without it cloud-init is left unconfigured
    "openssh-server",
    "sudo",  # cloud-init's default user gets NOPASSWD sudo
    "ifupdown",  # cloud-init's eni renderer (Debian 12's default)
    "isc-dhcp-client",
    "iproute2",
    "e2fsprogs",
    "xfsprogs",
    "lvm2",
    "thin-provisioning-tools",
    "qemu-utils",
    "python3",
    "python3-venv",
    "python3-pytest",
    "procps",
    "less",
)

# The LVM tier (tests/lvm) also needs: virt-xml-validate (a shell script around xmllint) for
# libvirt.xml, and a nested qemu booting a busybox initramfs whose drives are the LVs.
LVM_TIER_PACKAGES: tuple[str, ...] = (
    "libvirt-clients",
    "libxml2-utils",
    "qemu-system-x86",
    "busybox-static",
)
PACKAGES += LVM_TIER_PACKAGES

# Units a throwaway test guest never needs; masking them keeps the boot short.
MASKED_UNITS: tuple[str, ...] = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "apt-daily.service",
    "apt-daily-upgrade.service",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "dpkg-db-backup.timer",
    "systemd-networkd-wait-online.service",
    "lvm2-lvmpolld.socket",
    "getty@tty1.service",
    "systemd-timesyncd.service",
)

FILES: dict[str, str] = {
    "etc/fstab": "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
    "etc/hostname": "debian\n",
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    "etc/default/locale": "LANG=C.UTF-8\n",
    "etc/cloud/cloud.cfg.d/90-vmdisk-tests.cfg": (
        "# vmdisk test guest: only the datasources a Nova-like host provides.\n"
        "datasource_list: [ ConfigDrive, NoCloud ]\n"
        "locale: C.UTF-8\n"
        "# Older key types are slow to generate under TCG; ed25519 and ecdsa are enough.\n"
        "ssh_genkeytypes: [ ed25519, ecdsa ]\n"
    ),
    # Debian 12's cloud-init writes /etc/network/interfaces.d/50-cloud-init; read it.
    "etc/network/interfaces": (
        "source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n"
    ),
    # Never wait minutes for a network that a test guest either has at once or never gets.
    "etc/systemd/system/networking.service.d/10-timeout.conf": ("[Service]\nTimeoutStartSec=30\n"),
    "etc/systemd/system/ifupdown-wait-online.service.d/10-timeout.conf": (
        "[Service]\nTimeoutStartSec=20\n"
    ),
    "etc/dhcp/dhclient.conf": "timeout 20;\nretry 5;\nrequest subnet-mask, broadcast-address, "
    "time-offset, routers, domain-name, domain-name-servers, host-name;\n",
    "etc/systemd/journald.conf.d/10-volatile.conf": "[Journal]\nStorage=volatile\n",
    "etc/modules-load.d/vmdisk-tests.conf": "",
}

# Host module directories a VM never uses; the rest of /lib/modules/KVER is copied.
SKIPPED_MODULE_DIRS: tuple[str, ...] = (
    "kernel/drivers/gpu",
    "kernel/drivers/media",
    "kernel/drivers/net/wireless",
    "kernel/drivers/net/ethernet",
    "kernel/drivers/infiniband",
    "kernel/drivers/staging",
    "kernel/drivers/bluetooth",
    "kernel/sound",
    "kernel/net/bluetooth",
    "kernel/net/wireless",
    "kernel/net/mac80211",
)

KERNEL_ARGS = "root=/dev/vda rw rootfstype=ext4 console=ttyS0 net.ifnames=0 quiet"


@dataclass(frozen=True, slots=True)
class DebianImage:
    """A cached, read-only guest: use ``disk`` only as a backing file (see make_overlay)."""

    disk: Path  # compressed qcow2 holding an ext4 file system as the whole disk
    kernel: Path
    initrd: Path
    append: str  # kernel command line for -append
    kernel_release: str
    key: str  # recipe hash, the cache directory's suffix

    @property
    def directory(self) -> Path:
        return self.disk.parent


class BuildError(RuntimeError):
    pass


# ---------------------------------------------------------------------------- the recipe


def kernel_release() -> str:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        raise BuildError("no kernel in /boot: apt-get install linux-image-amd64")
    return kernels[-1].name.removeprefix("vmlinuz-")


def recipe(release: str | None = None) -> dict[str, object]:
    """Everything the image depends on; its hash names the cache entry."""
    return {
        "suite": SUITE,
        "variant": "minbase",
        "packages": list(PACKAGES),
        "masked": list(MASKED_UNITS),
        "files": FILES,
        "skipped_modules": list(SKIPPED_MODULE_DIRS),
        "append": KERNEL_ARGS,
        "root_size": ROOT_SIZE,
        "kernel_release": release or kernel_release(),
        "code": [inspect.getsource(f) for f in (_configure_tree, _make_disk, _copy_modules)],
    }


def recipe_key(release: str | None = None) -> str:
    blob = json.dumps(recipe(release), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cache_dir(override: Path | str | None = None) -> Path:
    if override is not None:
        return Path(override)
    return Path(os.environ.get("VMDISK_TEST_CACHE") or DEFAULT_CACHE)


# ---------------------------------------------------------------------------- the mirror


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    stanza: dict[str, str] = {}
    last = ""
    for raw in [*text.splitlines(), ""]:
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, last = {}, ""
        elif line[0] in " \t" and last:
            stanza[last] += " " + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            last = name.strip().lower()
            stanza[last] = value.strip()


def _one_line_entries(text: str) -> Iterator[tuple[str, str, list[str]]]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line[4:])
        parts = line.split()
        if len(parts) >= 3:
            yield parts[0], parts[1], parts[2:]


def apt_mirror(root: Path = Path("/etc/apt")) -> str:
    """The URI this machine's apt uses for ``bookworm main`` (or $VMDISK_DEBIAN_MIRROR)."""
    override = os.environ.get("VMDISK_DEBIAN_MIRROR")
    if override:
        return override
    candidates: list[Path] = []
    if (root / "sources.list").is_file():
        candidates.append(root / "sources.list")
    parts = root / "sources.list.d"
    if parts.is_dir():
        candidates += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in candidates:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for st in _deb822_stanzas(text):
                if st.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" not in st.get("types", "").split():
                    continue
                if (
                    SUITE in st.get("suites", "").split()
                    and "main" in st.get("components", "").split()
                ):
                    return st.get("uris", "").split()[0]
        else:
            for uri, suite, components in _one_line_entries(text):
                if suite == SUITE and "main" in components:
                    return uri
    raise BuildError(f"no '{SUITE} main' source in {root}; set VMDISK_DEBIAN_MIRROR")


# ---------------------------------------------------------------------------- building


def _run(argv: Sequence[str | Path], log: Path, env: dict[str, str] | None = None) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(map(str, argv))}\n".encode())
        out.flush()
        result = subprocess.run(  # noqa: PLW1510 - the return code is checked below
            [str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise BuildError(f"{argv[0]} failed ({result.returncode}):\n" + "\n".join(tail))


def _copy_modules(tree: Path, release: str) -> None:
    source = Path("/lib/modules") / release
    target = tree / "usr/lib/modules" / release
    skipped = {source / d for d in SKIPPED_MODULE_DIRS}

    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(directory) / n in skipped]

    shutil.copytree(source, target, symlinks=True, ignore=ignore)
    for link in ("build", "source"):
        (target / link).unlink(missing_ok=True)
    subprocess.run(["depmod", "-b", str(tree), release], check=True)


def _configure_tree(tree: Path, release: str) -> None:
    for name, text in FILES.items():
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    systemd = tree / "etc/systemd/system"
    for unit in MASKED_UNITS:
        link = systemd / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    wants = systemd / "getty.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    getty = wants / "serial-getty@ttyS0.service"
    getty.unlink(missing_ok=True)
    getty.symlink_to("/lib/systemd/system/serial-getty@.service")
    ssh = systemd / "multi-user.target.wants/ssh.service"
    if not ssh.is_symlink():  # links in the tree are absolute: never resolve them on the host
        ssh.parent.mkdir(parents=True, exist_ok=True)
        ssh.symlink_to("/lib/systemd/system/ssh.service")
    # Every instance gets its own identity: cloud-init makes host keys, systemd the machine id.
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (tree / "etc/machine-id").write_text("")
    (tree / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (tree / leftover).glob("*"):
            if entry.is_file():
                entry.unlink()
    _copy_modules(tree, release)


def _make_disk(tree: Path, work: Path, log: Path) -> Path:
    raw = work / "root.raw"
    with open(raw, "wb") as f:
        f.truncate(ROOT_SIZE)
    _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", tree, raw], log)
    qcow = work / DISK_NAME
    _run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, qcow], log)
    raw.unlink()
    return qcow


def _build(target: Path, release: str, key: str, log: Path, debs: Path) -> None:
    work = target / "work"
    tree = work / "tree"
    work.mkdir(parents=True)
    debs.mkdir(exist_ok=True)
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            f"--cache-dir={debs}",
            SUITE,
            tree,
            apt_mirror(),
        ],
        log,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"},
    )
    _configure_tree(tree, release)
    disk = _make_disk(tree, work, log)
    disk.rename(target / DISK_NAME)
    shutil.copy2(f"/boot/vmlinuz-{release}", target / "vmlinuz")
    shutil.copy2(f"/boot/initrd.img-{release}", target / "initrd.img")
    shutil.rmtree(work)
    (target / "recipe.json").write_text(json.dumps({"key": key, **recipe(release)}, indent=1))


def _image_in(directory: Path, release: str, key: str) -> DebianImage:
    return DebianImage(
        disk=directory / DISK_NAME,
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        append=KERNEL_ARGS,
        kernel_release=release,
        key=key,
    )


def get_image(cache: Path | str | None = None, *, log: Path | None = None) -> DebianImage:
    """The cached image for the current recipe, built first if missing (takes minutes)."""
    release = kernel_release()
    key = recipe_key(release)
    root = cache_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"debian-{SUITE}-{key}"
    if (final / DISK_NAME).is_file():
        return _image_in(final, release, key)
    with open(root / f"debian-{SUITE}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / DISK_NAME).is_file():  # another process built it while we waited
            return _image_in(final, release, key)
        temp = Path(tempfile.mkdtemp(prefix=f".debian-{SUITE}-{key}.", dir=root))
        build_log = log or temp.with_suffix(".log")
        try:
            # The .debs are kept for the next recipe: a rebuild then fetches nothing.
            _build(temp / "image", release, key, build_log, root / "debootstrap-debs")
            (temp / "image").rename(final)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        if log is None:
            shutil.move(build_log, final / "build.log")
    return _image_in(final, release, key)


# ---------------------------------------------------------------------------- using it


def make_overlay(image: DebianImage, path: Path, size: str | None = None) -> Path:
    """A writable qcow2 on top of the cached disk (grow it with size, e.g. "6G")."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.disk)]
    subprocess.run([*argv, str(path), *([size] if size else [])], check=True)
    return path


def make_keypair(directory: Path) -> tuple[Path, str]:
    """A throwaway ed25519 key: (private key path, public key text)."""
    key = directory / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmdisk-test", "-f", str(key)],
        check=True,
    )
    return key, key.with_suffix(".pub").read_text().strip()


def make_seed_iso(
    path: Path,
    *,
    instance_id: str,
    hostname: str,
    ssh_public_key: str,
    user_data: str | None = None,
    network_config: str | None = None,
) -> Path:
    """A NoCloud seed (volume label cidata) letting root and the default user in by key."""
    files = {
        "meta-data": f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n",
        "user-data": user_data
        or (f"#cloud-config\ndisable_root: false\nssh_authorized_keys:\n  - {ssh_public_key}\n"),
    }
    if network_config is not None:
        files["network-config"] = network_config
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        subprocess.run(
            [
                "genisoimage",
                "-quiet",
                "-output",
                str(path),
                "-volid",
                "cidata",
                "-joliet",
                "-rock",
                *files,
            ],
            cwd=tmp,
            check=True,
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=5",
)  # fmt: skip


@dataclass
class RunningGuest:
    process: subprocess.Popen[bytes]
    port: int
    console: Path
    qmp: Path
    started: float = field(default_factory=time.monotonic)

    def ssh(
        self,
        key: Path,
        command: str,
        *,
        user: str = "root",
        timeout: float = 120,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", *SSH_OPTIONS, "-i", str(key), "-p", str(self.port), f"{user}@127.0.0.1"]
        result = subprocess.run(
            [*argv, command], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"ssh {command!r} exited {result.returncode}: {result.stdout}{result.stderr}"
            )
        return result

    def wait_for_ssh(self, key: Path, *, user: str = "root", timeout: float = 400) -> float:
        """Seconds from start until `ssh true` succeeds; fails early if qemu exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"qemu exited {self.process.returncode}:\n{self.tail()}")
            try:
                if self.ssh(key, "true", user=user, timeout=15, check=False).returncode == 0:
                    return time.monotonic() - self.started
            except subprocess.TimeoutExpired:
                pass
            time.sleep(2)
        raise AssertionError(f"no ssh after {timeout}s:\n{self.tail()}")

    def powerdown(self) -> None:
        """Press the ACPI power button (a graceful stop, like `virsh shutdown`)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.qmp))
            reader = s.makefile("rb")
            reader.readline()  # greeting
            for cmd in ("qmp_capabilities", "system_powerdown"):
                s.sendall(json.dumps({"execute": cmd}).encode() + b"\n")
                while b'"return"' not in (line := reader.readline()):
                    if not line or b'"error"' in line:
                        raise AssertionError(f"QMP {cmd}: {line!r}")

    def wait_exit(self, timeout: float = 120) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def tail(self, lines: int = 40) -> str:
        if not self.console.exists():
            return "(no console output)"
        return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])


def boot(
    image: DebianImage,
    workdir: Path,
    *,
    disk: Path | None = None,
    seed: Path | None = None,
    memory_mb: int = 1024,
    cpus: int = 1,
    mac: str = "52:54:00:12:34:56",
    extra: Sequence[str] = (),
) -> RunningGuest:
    """Start qemu (TCG) on an overlay of the image; ssh reaches the guest on the returned port."""
    workdir.mkdir(parents=True, exist_ok=True)
    disk = disk or make_overlay(image, workdir / "root.qcow2")
    port = free_port()
    console = workdir / "console.log"
    qmp = workdir / "qmp.sock"
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-cpu", "max",
        "-m", str(memory_mb), "-smp", str(cpus), "-nographic", "-nodefaults",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", image.append,
        "-drive", f"file={disk},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
        "-serial", f"file:{console}",
        "-qmp", f"unix:{qmp},server=on,wait=off",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    if seed is not None:
        argv += ["-drive", f"file={seed},if=virtio,format=raw,readonly=on"]
    proc = subprocess.Popen(
        [*argv, *extra], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=open(workdir / "qemu.stderr", "wb"),  # noqa: SIM115 - lives as long as qemu
    )  # fmt: skip
    return RunningGuest(process=proc, port=port, console=console, qmp=qmp)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.guests.debian")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the image unless the cache has it")
    build.add_argument("--cache", type=Path, default=None)
    sub.add_parser("key", help="print the recipe hash")
    args = parser.parse_args(argv)
    if args.command == "key":
        print(recipe_key())
        return 0
    start = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt):
        image = get_image(args.cache)
        size = image.disk.stat().st_size
        print(f"{image.disk} ({size / 2**20:.0f} MiB) in {time.monotonic() - start:.1f}s")
        print(f"-kernel {image.kernel} -initrd {image.initrd} -append '{image.append}'")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
