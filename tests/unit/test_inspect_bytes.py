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
