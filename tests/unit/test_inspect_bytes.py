"""Header rules on hand-built bytes: no qemu-img involved, so these run in the unit tier."""

from __future__ import annotations

import gzip
import struct

import pytest

from vmdisk.errors import ImageTooLarge, UnsafeImage
from vmdisk.imagecache.inspect import StreamInspector


def verdict(data: bytes, declared: str | None = None, max_size: int | None = None):  # type: ignore[no-untyped-def]
    inspector = StreamInspector()
    for pos in range(0, len(data), 4096):
        inspector.feed(data[pos : pos + 4096])
    return inspector.finish(declared, max_size)


def qcow2_header(
    *,
    version: int = 3,
    backing: bytes = b"",
    crypt: int = 0,
    incompatible: int = 0,
    size: int = 1 << 20,
    l1_off: int = 0x30000,
    extensions: bytes = b"",
) -> bytes:
    """A minimal qcow2 v3 header, 64 KiB clusters, padded to 4 clusters."""
    header_len = 104 if version == 3 else 72
    backing_off = header_len + len(extensions) + 8 if backing else 0
    head = struct.pack(
        ">4sIQIIQIIQQIIQ",
        b"QFI\xfb",
        version,
        backing_off,
        len(backing),
        16,
        size,
        crypt,
        1,
        l1_off,
        0x10000,
        1,
        0,
        0,
    )
    if version == 3:
        head += struct.pack(">QQQII", incompatible, 0, 0, 4, header_len)
    head += extensions + b"\0" * 8 + backing
    return head.ljust(4 * 65536, b"\0")


def refused(data: bytes, declared: str | None = None) -> str:
    with pytest.raises(UnsafeImage) as err:
        verdict(data, declared)
    assert err.value.exit_code == 4
    return str(err.value.reason)


def test_plain_raw_is_raw() -> None:
    found = verdict(b"\x01" * 8192)
    assert (found.format, found.qemu_format, found.virtual_size) == ("raw", "raw", 8192)


def test_minimal_qcow2_is_qcow2() -> None:
    found = verdict(qcow2_header())
    assert found.format == "qcow2" and found.virtual_size == 1 << 20


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not-an-image"),
        (b"\x01" * 100, "not-an-image"),
        (gzip.compress(b"x" * 10000), "not-an-image"),
        (b"\xfd7zXZ\x00" + b"\0" * 1000, "not-an-image"),
        (b"<!DOCTYPE html><html><body>404</body></html>".ljust(2048), "not-an-image"),
        (b'# Disk DescriptorFile\nRW 2048 FLAT "/etc/passwd" 0\n'.ljust(1024), "flat-extent"),
        (b"KDMV" + struct.pack("<IIQ", 1, 3, 0) + b"\0" * 2000, "flat-extent"),
        (qcow2_header(version=1), "format-mismatch"),
        (qcow2_header(backing=b"/etc/passwd"), "backing-file"),
        (qcow2_header(crypt=1), "encrypted"),
        (qcow2_header(incompatible=0b10), "corrupt"),
        (qcow2_header(incompatible=0b100), "data-file"),
        (qcow2_header(incompatible=1 << 40), "corrupt"),
        (qcow2_header(extensions=struct.pack(">II", 0x44415441, 8) + b"/etc/pw\0"), "data-file"),
        (qcow2_header(l1_off=1 << 40), "corrupt"),
        (b"QED\x00" + b"\0" * 4096, "format-mismatch"),
        (b"LUKS\xba\xbe" + b"\0" * 4096, "format-mismatch"),
    ],
)
def test_refusals(data: bytes, reason: str) -> None:
    assert refused(data) == reason


def test_backing_file_is_named_in_the_message() -> None:
    with pytest.raises(UnsafeImage, match="/etc/passwd"):
        verdict(qcow2_header(backing=b"/etc/passwd"))


def test_declared_format_must_agree() -> None:
    assert refused(qcow2_header(), declared="raw") == "format-mismatch"
    assert refused(b"\x01" * 8192, declared="qcow2") == "format-mismatch"


def test_too_large_and_absurd_sizes() -> None:
    with pytest.raises(ImageTooLarge) as err:
        verdict(qcow2_header(size=1 << 50), max_size=1 << 40)
    assert err.value.reason == "too-large"
    with pytest.raises(ImageTooLarge):
        verdict(qcow2_header(size=(1 << 63) + 5))


@pytest.mark.parametrize(
    ("kind", "head", "found"),
    [
        ("kernel", b"\0" * 0x202 + b"HdrS" + b"\0" * 600, "bzImage"),
        ("kernel", b"\x7fELF" + b"\0" * 600, "elf"),
        (
            "kernel",
            b"MZ" + b"\0" * 0x3A + struct.pack("<I", 0x80) + b"\0" * 0x40 + b"PE\0\0" + b"\0" * 400,
            "pe",
        ),
        ("ramdisk", b"070701" + b"0" * 600, "cpio"),
        ("ramdisk", gzip.compress(b"x" * 100) + b"\0" * 600, "gzip"),
        ("ramdisk", b"\x28\xb5\x2f\xfd" + b"\0" * 600, "zstd"),
        ("ramdisk", b"\xfd7zXZ\x00" + b"\0" * 600, "xz"),
        ("ramdisk", b"\x04\x22\x4d\x18" + b"\0" * 600, "lz4"),
    ],
)
def test_boot_files_accepted(kind: str, head: bytes, found: str) -> None:
    from vmdisk.imagecache.inspect import check_boot_file

    assert check_boot_file(kind, head, len(head)) == found


@pytest.mark.parametrize(
    ("kind", "head"),
    [
        ("kernel", b"\x01" * 4096),
        ("kernel", qcow2_header()[:4096]),
        ("kernel", b"MZ" + b"\0" * 600),
        ("ramdisk", b"\x01" * 4096),
        ("ramdisk", b"\0" * 0x202 + b"HdrS" + b"\0" * 600),
        ("kernel", b"HdrS"),
    ],
)
def test_boot_files_refused(kind: str, head: bytes) -> None:
    from vmdisk.imagecache.inspect import check_boot_file

    with pytest.raises(UnsafeImage) as err:
        check_boot_file(kind, head, len(head))
    assert err.value.reason == f"not-a-{kind}"
