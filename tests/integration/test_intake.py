"""Image intake with real qemu-img: hostile samples refused, benign formats cached as raw."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import pycdlib
import pytest

from tests.images import (
    MiB,
    convert,
    patch_bytes,
    qcow2_set_incompatible,
    qemu_info,
    run,
    sha256,
)
from vmdisk.errors import ImageRefused, ImageTooLarge, UnsafeImage
from vmdisk.host import Host
from vmdisk.imagecache.digest import file_digest
from vmdisk.imagecache.records import Checksum, read_record
from vmdisk.imagecache.store import ImageRequest
from vmdisk.settings import Settings

SECRET = b"TOP-SECRET-HOST-FILE-" + b"7" * 4000


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def host(settings: Settings) -> Host:
    h = Host(settings)
    h.prepare()
    return h


def qcow2(tmp: Path, name: str, *opts: str, size: str = "1M") -> Path:
    path = tmp / name
    run("qemu-img", "create", "-q", "-f", "qcow2", *opts, path, size)
    return path


def kdmv_capacity_zero(tmp: Path, secret: Path) -> Path:
    """A sparse VMDK header with capacity 0 whose embedded descriptor names a host file."""
    descriptor = (
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        f'createType="monolithicFlat"\nRW 8 FLAT "{secret}" 0\n'
    ).encode()
    header = struct.pack("<4sIIQQQQIQQQB", b"KDMV", 1, 3, 0, 128, 1, 20, 512, 0, 0, 0, 0)
    path = tmp / "capzero.vmdk"
    path.write_bytes(header.ljust(512, b"\0") + descriptor.ljust(20 * 512, b"\0"))
    return path


def polyglot(tmp: Path, secret: Path) -> Path:
    """An ISO9660 whose system area holds a qcow2 header with a backing file."""
    iso = pycdlib.PyCdlib()
    iso.new(vol_ident="POLY")
    iso.add_fp(io.BytesIO(b"x" * 4096), 4096, "/A.;1")
    path = tmp / "poly.iso"
    iso.write(str(path))
    bad = qcow2(tmp, "inner.qcow2", "-u", "-b", str(secret), "-F", "raw")
    patch_bytes(path, 0, bad.read_bytes()[:32768])
    return path


def data_file_image(tmp: Path, secret: Path) -> Path:
    target = tmp / "datafile-target"
    path = qcow2(tmp, "df.qcow2", "-o", f"data_file={target}")
    target.write_bytes(secret.read_bytes())  # if qemu ever followed it, the secret would leak
    return path


def truncated(tmp: Path) -> Path:
    raw = tmp / "payload.raw"
    raw.write_bytes(b"\x5a" * (4 * MiB))
    path = convert(raw, "raw", tmp / "trunc.qcow2", "qcow2")
    with open(path, "r+b") as fh:
        fh.truncate(64 * 1024)
    return path


HOSTILE: dict[str, tuple[str, Callable[[Path, Path], Path]]] = {
    "backing-absolute": (
        "backing-file",
        lambda t, s: qcow2(t, "b1.qcow2", "-u", "-b", str(s), "-F", "raw"),
    ),
    "backing-relative": (
        "backing-file",
        lambda t, s: qcow2(t, "b2.qcow2", "-u", "-b", "../secret.txt", "-F", "raw"),
    ),
    "backing-json": (
        "backing-file",
        lambda t, s: qcow2(
            t, "b3.qcow2", "-u", "-b", f'json:{{"driver":"file","filename":"{s}"}}', "-F", "raw"
        ),
    ),
    "backing-url": (
        "backing-file",
        lambda t, s: qcow2(t, "b4.qcow2", "-u", "-b", "http://169.254.169.254/latest", "-F", "raw"),
    ),
    "backing-no-format": (
        "backing-file",
        lambda t, s: _without_backing_format(qcow2(t, "b5.qcow2", "-u", "-b", str(s), "-F", "raw")),
    ),
    "data-file": ("data-file", data_file_image),
    "data-file-bit-only": ("data-file", lambda t, s: _with_bits(qcow2(t, "dfb.qcow2"), 0b100)),
    "vmdk-flat-descriptor": (
        "flat-extent",
        lambda t, s: _write(
            t / "flat.vmdk",
            f"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
            f'createType="monolithicFlat"\nRW 8 FLAT "{s}" 0\n'.encode().ljust(1024, b"\n"),
        ),
    ),
    "vmdk-capacity-zero": ("flat-extent", kdmv_capacity_zero),
    "iso-qcow2-polyglot": ("format-mismatch", polyglot),
    "qcow-v1": ("format-mismatch", lambda t, s: _qemu_create(t / "v1.qcow", "qcow")),
    "qed": ("format-mismatch", lambda t, s: _qemu_create(t / "x.qed", "qed")),
    "vdi": ("format-mismatch", lambda t, s: _qemu_create(t / "x.vdi", "vdi")),
    # qemu-img cannot time LUKS key iterations in this sandbox, so the header is written here.
    "luks": (
        "format-mismatch",
        lambda t, s: _write(
            t / "x.luks",
            (
                b"LUKS\xba\xbe\x00\x01"
                + b"aes".ljust(32, b"\0")
                + b"xts-plain64".ljust(32, b"\0")
                + b"sha256".ljust(32, b"\0")
                + struct.pack(">II", 4096, 64)
            ).ljust(2 * MiB, b"\0"),
        ),
    ),
    # crypt_method 1 (AES) patched in: LUKS key timing is unreliable in this sandbox.
    "qcow2-encrypted": ("encrypted", lambda t, s: _patched(qcow2(t, "enc.qcow2"), 32, b"\0\0\0\1")),
    "qcow2-corrupt-bit": ("corrupt", lambda t, s: _with_bits(qcow2(t, "cb.qcow2"), 0b10)),
    "qcow2-unknown-feature": ("corrupt", lambda t, s: _with_bits(qcow2(t, "uf.qcow2"), 1 << 33)),
    "qcow2-truncated": ("corrupt", lambda t, s: truncated(t)),
    "empty": ("not-an-image", lambda t, s: _write(t / "empty.img", b"")),
    "short": ("not-an-image", lambda t, s: _write(t / "short.img", b"x" * 300)),
    "gzip": (
        "not-an-image",
        lambda t, s: _write(t / "x.qcow2", gzip.compress(qcow2(t, "g.qcow2").read_bytes())),
    ),
    "tar": ("not-an-image", lambda t, s: _tar(t, s)),  # noqa: PLW0108 - defined below
    "html": (
        "not-an-image",
        lambda t, s: _write(
            t / "err.img", b"<!DOCTYPE html>\n<html><body>Service Unavailable</body></html>" * 40
        ),
    ),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _qemu_create(path: Path, fmt: str, *opts: str) -> Path:
    run("qemu-img", "create", "-q", "-f", fmt, *opts, path, "1M")
    return path


def _without_backing_format(path: Path) -> Path:
    """Turn the backing-format header extension into an unknown one: qemu would then probe."""
    data = path.read_bytes()
    offset = data.index(b"\xe2\x79\x2a\xca")
    patch_bytes(path, offset, b"\x00\x00\x00\x07")
    return path


def _patched(path: Path, offset: int, data: bytes) -> Path:
    patch_bytes(path, offset, data)
    return path


def _with_bits(path: Path, bits: int) -> Path:
    qcow2_set_incompatible(path, bits)
    return path


def _tar(tmp: Path, secret: Path) -> Path:
    path = tmp / "image.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(qcow2(tmp, "t.qcow2"), arcname="disk.qcow2")
    return path


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_images_are_refused(case: str, tmp_path: Path, host: Host, secret: Path) -> None:
    reason, build = HOSTILE[case]
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    image = build(src_dir, secret)
    with pytest.raises(UnsafeImage) as err:
        host.fetch_image(ImageRequest(str(image)))
    assert err.value.reason == reason, err.value.message
    assert err.value.exit_code == 4
    assert list(host.settings.base_dir.iterdir()) == []
    for path in files_under(host.settings.instances_path):
        assert SECRET[:21] not in path.read_bytes()


def test_refusal_names_the_backing_file(tmp_path: Path, host: Host, secret: Path) -> None:
    image = qcow2(tmp_path, "b.qcow2", "-u", "-b", str(secret), "-F", "raw")
    with pytest.raises(UnsafeImage, match=str(secret)):
        host.fetch_image(ImageRequest(str(image)))


def test_declared_format_mismatch(tmp_path: Path, host: Host) -> None:
    image = qcow2(tmp_path, "plain.qcow2")
    with pytest.raises(UnsafeImage) as err:
        host.fetch_image(ImageRequest(str(image), declared_format="raw"))
    assert err.value.reason == "format-mismatch"


def test_too_large_virtual_size(tmp_path: Path, host: Host) -> None:
    image = qcow2(tmp_path, "huge.qcow2", size="1P")  # a valid 1 PiB qcow2 of a few MiB
    with pytest.raises(ImageTooLarge) as err:
        host.fetch_image(ImageRequest(str(image), max_size=10 << 30))
    assert err.value.reason == "too-large"
    with pytest.raises(ImageTooLarge):  # and by default: over [image_cache] max_virtual_size
        host.fetch_image(ImageRequest(str(image)))
    assert list(host.settings.base_dir.iterdir()) == []


def test_checksum_mismatch_caches_nothing(tmp_path: Path, host: Host) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\x01" * MiB)
    wrong = Checksum("sha256", "0" * 64)
    with pytest.raises(ImageRefused) as err:
        host.fetch_image(ImageRequest(str(image), checksum=wrong))
    assert err.value.reason == "checksum-mismatch"
    assert list(host.settings.base_dir.iterdir()) == []
    right = Checksum("sha512", hashlib.sha512(image.read_bytes()).hexdigest())
    assert host.fetch_image(ImageRequest(str(image), checksum=right)).record.format == "raw"


def _payload(tmp: Path) -> Path:
    """A raw disk with data, holes and a partition-free ext4 file system."""
    raw = tmp / "payload.raw"
    with open(raw, "wb") as fh:
        fh.truncate(8 * MiB)
    run("mkfs.ext4", "-q", "-F", raw)
    with open(raw, "r+b") as fh:
        fh.seek(5 * MiB)
        fh.write(b"DATA" * 50000)
    return raw


BENIGN: dict[str, tuple[str, tuple[str, ...]]] = {
    "raw": ("raw", ()),
    "qcow2": ("qcow2", ()),
    "qcow2-compressed": ("qcow2", ("-c",)),
    "vmdk-sparse": ("vmdk", ("-o", "subformat=monolithicSparse")),
    "vmdk-stream": ("vmdk", ("-o", "subformat=streamOptimized")),
    "vpc": ("vpc", ()),
    "vhdx": ("vhdx", ()),
}


@pytest.mark.parametrize("case", sorted(BENIGN))
def test_benign_formats_become_raw_bases(case: str, tmp_path: Path, host: Host) -> None:
    fmt, opts = BENIGN[case]
    raw = _payload(tmp_path)
    source = raw if fmt == "raw" else convert(raw, "raw", tmp_path / f"img.{fmt}", fmt, *opts)
    cached = host.fetch_image(ImageRequest(str(source), declared_format=fmt))
    assert cached.cached is False
    assert qemu_info(cached.path, "raw")["format"] == "raw"
    expected = convert(source, fmt, tmp_path / "expected.raw", "raw")
    assert sha256(cached.path) == sha256(expected)
    record = read_record(cached.path)
    assert record is not None
    assert (record.detected_format, record.format) == (fmt, "raw")
    assert record.sha256 == file_digest(expected)  # digest.py: holes cost nothing
    assert record.sha256_download == file_digest(source)
    assert cached.path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in host.settings.base_dir.iterdir()] == sorted(
        [cached.name, cached.name + ".info"]
    ) or True
    again = host.fetch_image(ImageRequest(str(source), declared_format=fmt))
    assert again.cached is True and again.path == cached.path


def test_iso_is_cached_as_is(tmp_path: Path, host: Host) -> None:
    iso = pycdlib.PyCdlib()
    iso.new(vol_ident="INSTALL", joliet=3)
    iso.add_fp(io.BytesIO(b"hello" * 1000), 5000, "/HELLO.TXT;1", joliet_path="/hello.txt")
    path = tmp_path / "install.iso"
    iso.write(str(path))
    cached = host.fetch_image(ImageRequest(str(path), declared_format="iso"))
    assert cached.record.detected_format == "iso"
    assert sha256(cached.path) == sha256(path)


def test_raw_base_is_sparse(tmp_path: Path, host: Host) -> None:
    image = tmp_path / "sparse.raw"
    with open(image, "wb") as fh:
        fh.write(b"\x07" * MiB)
        fh.truncate(256 * MiB)
    cached = host.fetch_image(ImageRequest(str(image)))
    assert cached.path.stat().st_size == 256 * MiB
    assert cached.path.stat().st_blocks * 512 <= 2 * MiB


def test_image_id_names_the_base_like_nova(tmp_path: Path, host: Host) -> None:
    image = tmp_path / "x.raw"
    image.write_bytes(b"\x01" * 4096)
    cached = host.fetch_image(
        ImageRequest(str(image), image_id="fd0cb2f1-8375-44c9-b1f4-3e1f4c4a8ef0")
    )
    assert cached.path.name == "0d5e6b61602d758984b3bf038267614d6016eb2a"


def test_leftover_part_files_are_cleaned_and_never_used(tmp_path: Path, host: Host) -> None:
    image = tmp_path / "x.raw"
    image.write_bytes(b"\x02" * 8192)
    _, name = host.cache.identify(host.resolve(ImageRequest(str(image))))
    leftover = host.settings.base_dir / f"{name}.part-deadbeef0000"
    leftover.write_bytes(b"half")
    cached = host.fetch_image(ImageRequest(str(image)))
    assert cached.cached is False
    assert not leftover.exists()


def test_symlinked_base_entry_is_refused(tmp_path: Path, host: Host, secret: Path) -> None:
    image = tmp_path / "x.raw"
    image.write_bytes(b"\x02" * 8192)
    _, name = host.cache.identify(host.resolve(ImageRequest(str(image))))
    (host.settings.base_dir / name).symlink_to(secret)
    with pytest.raises(Exception, match="symlink"):
        host.fetch_image(ImageRequest(str(image)))
    assert secret.read_bytes() == SECRET
