"""Builders for test images (benign and hostile) and independent readers of the results."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def vmdisk_argv(instances: Path, *args: str) -> list[str]:
    """The real CLI, in its own process, with JSON output."""
    import sys

    return [sys.executable, "-m", "vmdisk", "--json", "--instances-path", str(instances), *args]


def run(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LC_ALL": "C", "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=check, env=env
    )


def qemu_info(path: Path, fmt: str) -> dict[str, Any]:
    out = run("qemu-img", "info", "-f", fmt, "-U", "--output=json", path).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def base_digest(path: Path) -> str:
    """The digest a base's record keeps (vmdisk's tree digest, imagecache/digest.py)."""
    from vmdisk.imagecache.digest import file_digest

    return file_digest(path)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(MiB):
            h.update(block)
    return h.hexdigest()


def ext4_image(
    path: Path, files: dict[str, bytes], size: int = 32 * MiB, label: str = "rootfs"
) -> Path:
    """A raw ext4 file system holding `files`, made with mkfs.ext4 -d (no mount)."""
    tree = path.with_suffix(".tree")
    for rel, data in files.items():
        target = tree / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    tree.mkdir(exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)
    run("mkfs.ext4", "-q", "-F", "-L", label, "-d", tree, path)
    return path


def convert(src: Path, src_fmt: str, dst: Path, dst_fmt: str, *opts: str) -> Path:
    run("qemu-img", "convert", "-f", src_fmt, "-O", dst_fmt, *opts, src, dst)
    return dst


def debugfs_cat(raw_image: Path, guest_path: str) -> bytes:
    out = subprocess.run(
        ["debugfs", "-R", f"cat {guest_path}", str(raw_image)], capture_output=True, check=True
    )
    return out.stdout


def blkid(path: Path) -> dict[str, str]:
    out = run("blkid", "-p", "-o", "export", path, check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def patch_bytes(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def qcow2_set_incompatible(path: Path, bits: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(72)
        current = struct.unpack(">Q", fh.read(8))[0]
        fh.seek(72)
        fh.write(struct.pack(">Q", current | bits))


def qcow2_pointing_at(path: Path, backing: str) -> Path:
    """A small qcow2 whose header names `backing` (created unsafe: the target is not opened)."""
    run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", path, "1M")
    return path
