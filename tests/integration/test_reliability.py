"""Full disks, interrupts and bad input: clear errors, documented exit codes, nothing left."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.httpserver import Route, serve
from tests.images import MiB, convert, ext4_image, run
from vmdisk.cli.main import main
from vmdisk.errors import InsufficientSpace
from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import BackendName, InstanceSpec
from vmdisk.settings import Flavor, load_settings

VMDISK = [sys.executable, "-m", "vmdisk"]


@contextlib.contextmanager
def small_filesystem(tmp_path: Path, size_mb: int) -> Iterator[Path]:
    """An ext4 file system on a loop device: a real ENOSPC, and O_DIRECT like a real disk."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop file system needs root")
    image, mountpoint = tmp_path / "fs.img", tmp_path / "mnt"
    mountpoint.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(size_mb * MiB)
    run("mkfs.ext4", "-q", "-F", "-m", "0", image)
    run("mount", "-o", "loop", image, mountpoint)
    try:
        yield mountpoint
    finally:
        run("umount", "-l", mountpoint, check=False)


def files_in(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "locks" not in p.parts and p.name != "lost+found"
    )


def fill(directory: Path, leave: int) -> Path:
    """Fill a file system until `leave` bytes are free; returns the filler to delete later."""
    filler = directory / "filler"
    st = os.statvfs(directory)
    with open(filler, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def host_on(path: Path) -> Host:
    return Host(load_settings(None, env={}, overrides={"instances_path": str(path / "inst")}))


def random_raw(path: Path, data_mb: int, size_mb: int) -> Path:
    with open(path, "wb") as fh:
        fh.write(os.urandom(data_mb * MiB))
        fh.truncate(size_mb * MiB)
    return path


def test_full_disk_fetch_convert_create_then_recover(tmp_path: Path) -> None:
    big = random_raw(tmp_path / "big.raw", 24, 32)
    dense = tmp_path / "dense.raw"
    dense.write_bytes(b"compressible " * (40 * MiB // 13))  # small as qcow2, 40 MiB as raw
    packed = convert(dense, "raw", tmp_path / "d.qcow2", "qcow2", "-c")
    assert packed.stat().st_size < 4 * MiB
    small = ext4_image(tmp_path / "small.raw", {"m": b"1"}, size=8 * MiB)
    with small_filesystem(tmp_path, 160) as fs:
        host = host_on(fs)
        host.prepare()
        filler = fill(fs, 16 * MiB)
        with pytest.raises(InsufficientSpace) as err:  # known size: refused up front
            host.fetch_image(ImageRequest(str(big)))
        assert "needs" in err.value.message and err.value.exit_code == 1
        with pytest.raises(InsufficientSpace):  # the download fits; the conversion fills the disk
            host.fetch_image(ImageRequest(str(packed)))
        with (
            serve({"/img": Route(big.read_bytes(), no_length=True, ranges=False)}) as srv,
            pytest.raises(InsufficientSpace),
        ):  # unknown size: ENOSPC while writing
            host.fetch_image(ImageRequest(srv.url("/img")))
        spec = InstanceSpec(
            "flat", str(uuidlib.uuid4()), Flavor("f", 1, 64, 1), backend=BackendName.FLAT
        )
        host.fetch_image(ImageRequest(str(small)))
        with pytest.raises(InsufficientSpace):  # preallocating 1 GiB cannot fit
            Host(
                load_settings(
                    None,
                    env={},
                    overrides={"instances_path": str(fs / "inst"), "preallocate_images": "space"},
                )
            ).create_instance(spec, ImageRequest(str(small)))
        assert files_in(fs / "inst") == sorted(
            f"_base/{n}" for n in os.listdir(fs / "inst" / "_base")
        )  # only the small base
        assert host.instances() == []
        filler.unlink()
        assert host.fetch_image(ImageRequest(str(big))).record.virtual_size == 32 * MiB
        assert host.fetch_image(ImageRequest(str(packed))).record.format == "raw"
        assert host.create_instance(spec, ImageRequest(str(small))).path.exists()


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("command", ["fetch", "create"])
def test_interrupts_clean_up_and_exit_130(
    tmp_path: Path, sig: signal.Signals, command: str
) -> None:
    body = os.urandom(4 * MiB)
    inst = tmp_path / "inst"
    with serve({"/slow": Route(body, rate=MiB)}) as srv:
        args = (
            ["image", "fetch", srv.url("/slow")]
            if command == "fetch"
            else ["create", "vm", "--image", srv.url("/slow"), "--flavor", "m1.tiny"]
        )
        proc = subprocess.Popen(
            [*VMDISK, "--instances-path", str(inst), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wait_for(lambda: any((inst / "_base").glob("*.part-*")))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and b"interrupted" in err.lower() + out.lower()
    assert files_in(inst) == []
    assert not list(inst.glob(".building-*"))


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(["--json", *args])
    out, _ = capsys.readouterr()
    return code, json.loads(out)["error"] if code else json.loads(out)


TINY = ["--flavor", "m1.tiny"]
CUSTOM = ["--vcpus", "1", "--ram-mb", "64"]
BAD_CREATE = {
    "negative root": [*CUSTOM, "--root-gb", "-1"],
    "root not a number": [*CUSTOM, "--root-gb", "x"],
    "zero vcpus": ["--vcpus", "0", "--ram-mb", "64", "--root-gb", "1"],
    "absurd root": [*CUSTOM, "--root-gb", "99999999"],
    "zero-sized ephemeral": [*TINY, "--ephemeral", "0"],
    "short checksum": [*TINY, "--checksum", "sha256:abc"],
    "unknown algorithm": [*TINY, "--checksum", "crc32:00000000"],
    "bad max size": [*TINY, "--max-size", "10X"],
    "bad uuid": [*TINY, "--uuid", "not-a-uuid"],
    "flavor and custom": [*TINY, "--vcpus", "2"],
}


@pytest.mark.parametrize("case", sorted(BAD_CREATE))
def test_bad_create_input_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    image = ext4_image(tmp_path / "i.raw", {"m": b"1"}, size=4 * MiB)
    inst = tmp_path / "inst"
    code, error = cli(
        capsys,
        "--instances-path",
        str(inst),
        "create",
        "vm",
        "--image",
        str(image),
        *BAD_CREATE[case],
    )
    assert code == 2, error
    assert not inst.exists() or files_in(inst) == []


BAD_SOURCES = ["file://otherhost/etc/passwd", "ftp://127.0.0.1/x", "data:,hello", ""]


@pytest.mark.parametrize("source", BAD_SOURCES)
def test_bad_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str) -> None:
    code, error = cli(capsys, "--instances-path", str(tmp_path / "i"), "image", "fetch", source)
    assert code == 2 and error["type"] == "InvalidRequest"


@pytest.mark.parametrize(
    "routes",
    [
        {"/a": Route(status=302, location="file:///etc/passwd")},
        {"/a": Route(status=302, location="/a")},
        {"/a": Route(status=302, location="/b"), "/b": Route(status=302, location="/a")},
        {
            **{f"/r{i}": Route(status=302, location=f"/r{i + 1}") for i in range(6)},
            "/r6": Route(b"\x01" * 4096),
        },
    ],
    ids=["to-file", "loop", "ping-pong", "six-hops"],
)
def test_bad_redirects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], routes: dict[str, Route]
) -> None:
    start = "/a" if "/a" in routes else "/r0"
    with serve(routes) as srv:
        code, error = cli(
            capsys, "--instances-path", str(tmp_path / "i"), "image", "fetch", srv.url(start)
        )
    assert code == 1 and error["reason"] == "redirect-refused"
    assert files_in(tmp_path / "i") == []


def test_symlinks_in_the_cache_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"do not touch")
    image = tmp_path / "i.raw"
    image.write_bytes(b"\x01" * 8192)
    inst = tmp_path / "inst"
    (inst / "_base").mkdir(parents=True)
    name = __import__("hashlib").sha1(f"file://{image}".encode()).hexdigest()
    (inst / "_base" / name).symlink_to(secret)
    code, error = cli(capsys, "--instances-path", str(inst), "image", "fetch", str(image))
    assert code == 2 and error["reason"] == "symlink"
    assert secret.read_bytes() == b"do not touch"
    other = tmp_path / "elsewhere"
    other.mkdir()
    inst2 = tmp_path / "inst2"
    inst2.mkdir()
    (inst2 / "_base").symlink_to(other)
    code, error = cli(capsys, "--instances-path", str(inst2), "image", "fetch", str(image))
    assert code == 2 and error["reason"] == "symlink"
    assert list(other.iterdir()) == []


def test_toml_with_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    for text in ("[libvirt\n", "instances_path = 3\n", "[image_cache]\nmax_size = -5\n"):
        cfg.write_text(text)
        code, error = cli(capsys, "--config", str(cfg), "list")
        assert code == 3 and error["type"] == "SettingsError" and str(cfg) in str(error["message"])
