"""qcow2 headers written by hand with struct; mkfs/mkswap argv through the FakeRunner."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.fakes import FakeRunner
from vmdisk.errors import InvalidRequest
from vmdisk.tools.filesystems import make_filesystem, make_swap, mkfs_argv
from vmdisk.tools.headers import QCOW_MAGIC, qcow2_backing_file, read_facts


def qcow2_header(path: Path, size: int, backing: bytes | None, cluster_bits: int = 16) -> None:
    """A version-3 header: magic, version, backing offset/length, cluster bits, size."""
    offset = 512 if backing else 0
    head = QCOW_MAGIC + struct.pack(">IQIIQ", 3, offset, len(backing or b""), cluster_bits, size)
    data = head.ljust(offset or 104, b"\0") + (backing or b"")
    path.write_bytes(data)


def test_read_facts_of_a_qcow2_with_backing(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    qcow2_header(disk, 10 << 30, b"/var/lib/vmdisk/_base/abc")
    facts = read_facts(disk, "qcow2")
    assert facts.format == "qcow2"
    assert facts.virtual_size == 10 << 30
    assert facts.backing_file == "/var/lib/vmdisk/_base/abc"
    assert facts.cluster_size == 65536
    assert qcow2_backing_file(disk) == "/var/lib/vmdisk/_base/abc"


def test_read_facts_of_a_qcow2_without_backing(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    qcow2_header(disk, 1 << 20, None, cluster_bits=21)
    facts = read_facts(disk, "qcow2")
    assert (facts.backing_file, facts.cluster_size, facts.virtual_size) == (None, 2 << 20, 1 << 20)


def test_read_facts_of_a_raw_file_is_its_size(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(b"x" * 4096)
    facts = read_facts(disk, "raw")
    assert (facts.format, facts.virtual_size, facts.backing_file) == ("raw", 4096, None)
    assert facts.allocated >= 4096


def test_a_file_that_is_not_qcow2_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(b"not a qcow2 header".ljust(128, b"\0"))
    with pytest.raises(ValueError, match="not a qcow2"):
        read_facts(disk, "qcow2")
    assert qcow2_backing_file(disk) is None
    assert qcow2_backing_file(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("fs", "label", "argv"),
    [
        ("ext4", "ephemeral0", ["mkfs", "-t", "ext4", "-F", "-L", "ephemeral0"]),
        ("xfs", None, ["mkfs", "-t", "xfs", "-f"]),
        ("vfat", "EPH", ["mkfs", "-t", "vfat", "-n", "EPH"]),
        ("ntfs", "e", ["mkfs", "-t", "ntfs", "-F", "-Q", "-L", "e"]),
    ],
)
def test_mkfs_argv(fs: str, label: str | None, argv: list[str], tmp_path: Path) -> None:
    assert mkfs_argv(fs, tmp_path / "d", label) == [*argv, str(tmp_path / "d")]


def test_mkfs_argv_from_the_operators_command() -> None:
    argv = mkfs_argv("ext4", Path("/x/disk 1"), "lbl", "mkfs.ext4 -q -L %(fs_label)s %(target)s")
    assert argv == ["mkfs.ext4", "-q", "-L", "lbl", "/x/disk", "1"]


def test_unknown_file_system_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="unknown ephemeral file system") as err:
        mkfs_argv("zfs", Path("/d"), None)
    assert err.value.reason == "bad-fs"


def test_make_filesystem_and_swap_run_through_the_runner(tmp_path: Path) -> None:
    runner = FakeRunner()
    make_filesystem(runner, "ext3", tmp_path / "e", "lbl")
    make_swap(runner, tmp_path / "s")
    assert [argv for argv, _ in runner.seen] == [
        ["mkfs", "-t", "ext3", "-F", "-L", "lbl", str(tmp_path / "e")],
        ["mkswap", str(tmp_path / "s")],
    ]
