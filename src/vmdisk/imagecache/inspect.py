"""Decide from the bytes alone what an image is and whether qemu may ever see it.

oslo.utils' format_inspector (the detector Nova and Glance use) runs on the stream as it
arrives; on top of it we refuse what it lets through: compressed containers, HTML error pages,
qcow v1, encrypted or corrupt-flagged qcow2, truncated L1/refcount tables, VMDK files whose
sparse header has capacity 0 (qemu then follows the embedded descriptor's extents).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmdisk.errors import ImageTooLarge, UnsafeImage
from vmdisk.lazy import LazyModule
from vmdisk.tools.qemu_img import ImageInfo
from vmdisk.units import MAX_SIZE, format_size

if TYPE_CHECKING:
    from oslo_utils.imageutils import format_inspector as fi
else:  # imported when an image is first inspected, not by every command (vmdisk/lazy.py)
    fi = LazyModule("oslo_utils.imageutils.format_inspector")

#: Formats a user may declare; vpc is qemu's name for VHD.
ALLOWED_FORMATS = ("raw", "qcow2", "vmdk", "vpc", "vhdx", "iso")
#: The qemu-img driver that reads each detected format.
QEMU_FORMAT = {
    "raw": "raw",
    "gpt": "raw",
    "iso": "raw",
    "qcow2": "qcow2",
    "vmdk": "vmdk",
    "vpc": "vpc",
    "vhdx": "vhdx",
}
VMDK_ALLOWED_TYPES = ("monolithicSparse", "streamOptimized")
HEAD_BYTES = 1024 * 1024
SECTOR = 512

_CONTAINERS = (
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"\xfd7zXZ\x00", "an xz archive"),
    (0, b"BZh", "a bzip2 archive"),
    (0, b"\x28\xb5\x2f\xfd", "a zstd archive"),
    (0, b"PK\x03\x04", "a zip archive"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (0, b"\x04\x22\x4d\x18", "an lz4 archive"),
    (257, b"ustar", "a tar archive"),
)
_OTHER_FORMATS = (
    (0, b"QED\x00", "qed"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels"),
    (0x40, b"\x7f\x10\xda\xbe", "vdi"),
)
_OSLO_NAMES = {"vhd": "vpc"}
_QCOW_KNOWN_INCOMPATIBLE = 0b11101  # dirty, (corrupt), (data file), compression type, extended L2
_QCOW_EXT_DATA_FILE = 0x44415441


@dataclass(frozen=True, slots=True)
class Detection:
    """What the bytes are: our format name, the qemu driver for it, and the virtual size."""

    format: str
    qemu_format: str
    virtual_size: int
    file_size: int


def refuse(reason: str, message: str) -> UnsafeImage:
    return UnsafeImage(message, reason=reason, hint="the image was not cached; nothing was written")


class StreamInspector:
    """Fed each chunk of a download in order; `finish()` gives the verdict."""

    def __init__(self) -> None:
        self._inspectors = [cls() for cls in fi.ALL_FORMATS.values()]
        self._failed: set[int] = set()
        self._head = bytearray()
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[: HEAD_BYTES - len(self._head)]
        self.size += len(chunk)
        for index, inspector in enumerate(self._inspectors):
            if index in self._failed:
                continue
            try:
                inspector.eat_chunk(chunk)
            except Exception:  # an inspector that cannot parse the stream just does not match
                self._failed.add(index)

    def early_size(self) -> tuple[str, int | None] | None:
        """What the header already says, before the download is over: (qemu format, virtual
        size), ("raw", None) once the first MiB shows no container header, None if undecided.

        A guess to refuse early by; finish() still decides from the whole stream.
        """
        head = self._head
        if len(head) < SECTOR:
            return None
        if head[:4] == b"QFI\xfb" and len(head) >= 32:
            return "qcow2", struct.unpack_from(">Q", head, 24)[0]
        if head[:4] == b"KDMV" and len(head) >= 20:
            return "vmdk", struct.unpack_from("<Q", head, 12)[0] * SECTOR
        if head[:8] == b"conectix" and len(head) >= 56:
            return "vpc", struct.unpack_from(">Q", head, 48)[0]
        if head[:8] == b"vhdxfile":
            return self._vhdx_size()
        if len(head) >= HEAD_BYTES:
            return "raw", None
        return None

    def _vhdx_size(self) -> tuple[str, int | None] | None:
        for index, inspector in enumerate(self._inspectors):
            if inspector.NAME == "vhdx" and index not in self._failed:
                try:
                    size = int(inspector.virtual_size)
                except Exception:  # its metadata region has not arrived yet
                    return None
                return ("vhdx", size) if size > 0 else None
        return None

    def finish(self, declared: str | None = None, max_size: int | None = None) -> Detection:
        """Refuse (UnsafeImage / ImageTooLarge) or say what the image is."""
        for index, inspector in enumerate(self._inspectors):
            if index not in self._failed:
                inspector.finish()
        head = bytes(self._head)
        _refuse_non_images(head, self.size)
        inspector = self._single_match()
        fmt = _OSLO_NAMES.get(inspector.NAME, inspector.NAME)
        _own_header_checks(fmt, head, self.size)
        _oslo_safety(inspector)
        _check_declared(declared, fmt)
        size = _virtual_size(inspector, fmt, self.size)
        _check_size(size, max_size)
        return Detection(fmt, QEMU_FORMAT[fmt], size, self.size)

    def _single_match(self) -> Any:
        alive = [i for n, i in enumerate(self._inspectors) if n not in self._failed]
        matches = [i for i in alive if i.NAME != "raw" and i.complete and i.format_match]
        names = sorted(i.NAME for i in matches)
        if names == ["gpt", "iso"]:  # a hybrid bootable ISO is an ISO (Nova allows this pair)
            return next(i for i in matches if i.NAME == "iso")
        if len(matches) > 1:
            raise refuse(
                "format-mismatch",
                f"the image matches more than one format ({', '.join(names)}): a polyglot",
            )
        if matches:
            return matches[0]
        return next(i for i in self._inspectors if i.NAME == "raw")


def inspect_file(
    path: Path,
    declared: str | None = None,
    max_size: int | None = None,
    *,
    limit: int | None = None,
) -> Detection:
    """Run the stream inspector over a file (or its first `limit` bytes)."""
    inspector = StreamInspector()
    with open(path, "rb") as fh:
        read = 0
        while chunk := fh.read(HEAD_BYTES):
            inspector.feed(chunk)
            read += len(chunk)
            if limit is not None and read >= limit:
                break
    if limit is not None:
        inspector.size = path.stat().st_size
    return inspector.finish(declared, max_size)


def recheck_raw_base(path: Path) -> None:
    """Re-run the header checks on a cached raw base before an overlay points at it.

    A raw base must not look like any other format: a cache written before a rule existed,
    or a planted file, would otherwise reach qemu as something it is not (OSSA-2024-002).
    """
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
        size = os.fstat(fh.fileno()).st_size
    # The verdict is a function of these bytes and the size alone: the same pair was already
    # accepted by this process (a Host reused for many creates, threads), so skip the parsing.
    key = (size, hashlib.sha256(head).digest())
    if key in _RECHECKED:
        return
    inspector = StreamInspector()
    inspector.feed(head)
    inspector.size = size
    found = inspector.finish(None, None)
    if found.qemu_format != "raw":
        raise refuse(
            "format-mismatch",
            f"cached base {path.name} should be raw but its header says {found.format}",
        )
    _RECHECKED.add(key)


_RECHECKED: set[tuple[int, bytes]] = set()


def confirm_with_qemu(info: ImageInfo, found: Detection, path: Path) -> None:
    """qemu-img's own reading must agree with ours and show no reference to another file."""
    if info.format != found.qemu_format:
        raise refuse("format-mismatch", f"qemu-img reads {info.format}, we detected {found.format}")
    if info.backing_file:
        raise refuse("backing-file", f"{info.format} backing file {info.backing_file!r}")
    if info.data_file:
        raise refuse("data-file", f"qcow2 external data file {info.data_file!r}")
    if info.encrypted:
        raise refuse("encrypted", "qemu-img reports the image as encrypted")
    if info.corrupt:
        raise refuse("corrupt", "qemu-img reports the image as corrupt")
    if info.format == "vmdk":
        if info.create_type not in VMDK_ALLOWED_TYPES:
            raise refuse("flat-extent", f"VMDK create type {info.create_type!r} is not allowed")
        others = [f for f in info.extent_files if Path(f).resolve() != path.resolve()]
        if others:
            raise refuse("flat-extent", f"VMDK extent names another file: {others[0]!r}")


def _refuse_non_images(head: bytes, size: int) -> None:
    if size < SECTOR:
        raise refuse("not-an-image", f"the image is {size} bytes, shorter than one sector")
    for offset, magic, what in _CONTAINERS:
        if head[offset : offset + len(magic)] == magic:
            raise refuse("not-an-image", f"the image is {what}, not a disk image; unpack it first")
    text = head[:512].lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        raise refuse("not-an-image", "the download is an HTML/XML page, not a disk image")
    if head.startswith(b"# Disk DescriptorFile") or head.startswith(b"# disk descriptorfile"):
        raise refuse("flat-extent", "the image is a text VMDK descriptor that names other files")
    for offset, magic, name in _OTHER_FORMATS:
        if head[offset : offset + len(magic)] == magic:
            raise refuse("format-mismatch", f"image format {name} is not allowed")


def _own_header_checks(fmt: str, head: bytes, size: int) -> None:
    if head[:4] == b"QFI\xfb":
        _check_qcow(head, size)
    elif head[:4] == b"KDMV" and len(head) >= 20:
        capacity = struct.unpack_from("<Q", head, 12)[0]
        if capacity == 0:
            raise refuse(
                "flat-extent",
                "VMDK sparse header with capacity 0: qemu would follow its embedded descriptor",
            )


def _check_qcow(head: bytes, size: int) -> None:
    if len(head) < 72:
        raise refuse("corrupt", "qcow2 header is truncated")
    version, backing_off, backing_len = struct.unpack_from(">IQI", head, 4)
    if version not in (2, 3):
        raise refuse("format-mismatch", f"qcow version {version} is not allowed (only qcow2 v2/v3)")
    if backing_off:
        name = head[backing_off : backing_off + min(backing_len, 1023)]
        shown = name.decode("utf-8", "replace") if name else f"at offset {backing_off}"
        raise refuse("backing-file", f"qcow2 backing file {shown!r}")
    cluster_bits, _vsize, crypt = struct.unpack_from(">IQI", head, 20)
    if crypt:
        raise refuse(
            "encrypted",
            f"qcow2 image is encrypted (crypt_method {crypt}); vmdisk cannot verify what it holds",
        )
    if not 9 <= cluster_bits <= 21:
        raise refuse("corrupt", f"qcow2 cluster_bits {cluster_bits} is out of range")
    l1_size, l1_off, rc_off, rc_clusters = struct.unpack_from(">IQQI", head, 36)
    cluster = 1 << cluster_bits
    if l1_off + l1_size * 8 > size or rc_off + rc_clusters * cluster > size:
        raise refuse(
            "corrupt",
            "qcow2 L1 or refcount table lies beyond the end of the file (truncated image)",
        )
    if version == 3 and len(head) >= 104:
        _check_qcow3(head)


def _check_qcow3(head: bytes) -> None:
    incompatible = struct.unpack_from(">Q", head, 72)[0]
    if incompatible & 0b10:
        raise refuse("corrupt", "qcow2 image has its corrupt bit set")
    if incompatible & 0b100:
        raise refuse("data-file", "qcow2 image uses an external data file (incompatible bit 2)")
    if incompatible & ~_QCOW_KNOWN_INCOMPATIBLE:
        raise refuse("corrupt", f"qcow2 unknown incompatible features {incompatible:#x}")
    header_length = struct.unpack_from(">I", head, 100)[0]
    for ext_type, data in _qcow_extensions(head, header_length):
        if ext_type == _QCOW_EXT_DATA_FILE:
            raise refuse("data-file", f"qcow2 external data file {data.decode(errors='replace')!r}")


def _qcow_extensions(head: bytes, offset: int) -> Iterable[tuple[int, bytes]]:
    while offset + 8 <= len(head):
        ext_type, length = struct.unpack_from(">II", head, offset)
        if ext_type == 0:
            return
        yield ext_type, head[offset + 8 : offset + 8 + length]
        offset += 8 + ((length + 7) & ~7)


_OSLO_REASONS = {
    "backing_file": "backing-file",
    "data_file": "data-file",
    "descriptor": "flat-extent",
    "footer": "corrupt",
    "unknown_features": "corrupt",
    "mbr_partitions": "corrupt",
    "banned": "format-mismatch",
    "version": "format-mismatch",
}


#: oslo's qcow2 inspector knows incompatible bits 0-3 only; extended L2 (bit 4, qemu >= 5.2) is
#: legitimate, and _check_qcow3 has already refused every bit outside _QCOW_KNOWN_INCOMPATIBLE.
_OURS_TO_JUDGE = {"qcow2": frozenset({"unknown_features"})}


def _oslo_safety(inspector: Any) -> None:
    try:
        inspector.safety_check()
    except fi.SafetyCheckFailed as exc:
        ours = _OURS_TO_JUDGE.get(inspector.NAME, frozenset())
        failures = {k: v for k, v in exc.failures.items() if k not in ours}
        if not failures:
            return
        name, failure = next(iter(failures.items()))
        reason = _OSLO_REASONS.get(name.removeprefix("inner_"), "corrupt")
        raise refuse(reason, f"{inspector.NAME} safety check {name!r} failed: {failure}") from exc
    except fi.ImageFormatError as exc:
        raise refuse("corrupt", f"{inspector.NAME} image cannot be parsed: {exc}") from exc


def _check_declared(declared: str | None, fmt: str) -> None:
    if fmt not in ALLOWED_FORMATS and fmt != "gpt":
        raise refuse("format-mismatch", f"image format {fmt} is not allowed")
    if declared is None:
        return
    agrees = declared == fmt or (declared == "raw" and fmt == "gpt")
    if not agrees:
        raise refuse("format-mismatch", f"declared {declared} but the content is {fmt}")


def _virtual_size(inspector: Any, fmt: str, file_size: int) -> int:
    if QEMU_FORMAT[fmt] == "raw":
        return file_size
    try:
        return int(inspector.virtual_size)
    except Exception as exc:
        raise refuse("corrupt", f"cannot read the {fmt} virtual size: {exc}") from exc


def _check_size(size: int, max_size: int | None) -> None:
    if size <= 0 or size > MAX_SIZE:
        raise ImageTooLarge(f"absurd virtual size {size}", reason="too-large")
    if max_size is not None and size > max_size:
        raise ImageTooLarge(
            f"virtual size {format_size(size)} is over the limit of {format_size(max_size)}",
            reason="too-large",
            hint="raise --max-size (or [image_cache] max_virtual_size) if this is expected",
        )


_RAMDISK_MAGICS = (
    (b"070701", "cpio"),
    (b"070702", "cpio"),
    (b"070707", "cpio"),
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x04\x22\x4d\x18", "lz4"),
)


def check_boot_file(kind: str, head: bytes, size: int) -> str:
    """A kernel must be a Linux boot image (HdrS at 0x202), an ELF or a PE; a ramdisk a
    cpio or a gzip/zstd/xz/lz4 archive. Returns what was found."""
    if size < SECTOR:
        raise refuse(f"not-a-{kind}", f"the {kind} is {size} bytes, too short to be one")
    if kind == "kernel":
        if head[0x202:0x206] == b"HdrS":
            return "bzImage"
        if head[:4] == b"\x7fELF":
            return "elf"
        if head[:2] == b"MZ" and len(head) >= 0x40:
            pe = struct.unpack_from("<I", head, 0x3C)[0]
            if head[pe : pe + 4] == b"PE\0\0":
                return "pe"
        raise refuse(
            "not-a-kernel",
            "not a Linux kernel image: no HdrS boot header at 0x202, and not an ELF or PE file",
        )
    for magic, name in _RAMDISK_MAGICS:
        if head.startswith(magic):
            return name
    raise refuse(
        "not-a-ramdisk", "not a ramdisk: expected a cpio archive or a gzip, zstd, xz or lz4 stream"
    )
