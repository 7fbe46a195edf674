"""mkfs with a label, and mkswap: how ephemeral and swap disks get their content."""

from __future__ import annotations

import shlex
from pathlib import Path

from vmdisk.errors import InvalidRequest
from vmdisk.tools.runner import Runner

_LABEL_FLAG = {"vfat": "-n", "msdos": "-n"}
_FORCE = {"ext2": ["-F"], "ext3": ["-F"], "ext4": ["-F"], "xfs": ["-f"], "ntfs": ["-F", "-Q"]}
KNOWN = ("ext2", "ext3", "ext4", "xfs", "vfat", "msdos", "ntfs")


def mkfs_argv(fs: str, target: Path, label: str | None, command: str | None = None) -> list[str]:
    """Nova's argv: `mkfs -t FS [-F] -L LABEL TARGET` (vfat: -n); or the operator's virt_mkfs.

    ntfs also gets -Q: without it mkfs.ntfs writes zeros over the whole disk.
    """
    if command:
        return shlex.split(command % {"fs_label": label or "", "target": str(target)})
    if fs not in KNOWN:
        raise InvalidRequest(f"unknown ephemeral file system {fs!r}", reason="bad-fs")
    argv = ["mkfs", "-t", fs, *_FORCE.get(fs, [])]
    if label:
        argv += [_LABEL_FLAG.get(fs, "-L"), label]
    return [*argv, str(target)]


def make_filesystem(
    runner: Runner, fs: str, target: Path, label: str | None, command: str | None = None
) -> None:
    runner.run(mkfs_argv(fs, target, label, command), timeout=600)


def make_swap(runner: Runner, target: Path) -> None:
    runner.run(["mkswap", str(target)], timeout=120)
