"""Issue 16, intake side: pinning on a cache hit, size and time bombs, orphans, lock waits,
legitimate images that used to be refused, and inode exhaustion in `_base`."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from tests.images import MiB, run, sha256
from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import InstanceSpec
from vmdisk.settings import Flavor, ImagesType, Settings, load_settings

UUID = "0b7e5d2a-4c1f-4e8a-9d3b-2f6a1c0e9b77"


def make_host(settings: Settings, **changes: object) -> Host:
    h = Host(dataclasses.replace(settings, **changes))  # type: ignore[arg-type]
    h.prepare()
    return h


def base_files(host: Host) -> list[str]:
    return sorted(p.name for p in host.settings.base_dir.iterdir())


def random_raw(path: Path, size: int = 4 * MiB) -> Path:
    with open("/dev/urandom", "rb") as src:
        path.write_bytes(src.read(size))
    return path


def same_contents(a: Path, a_fmt: str, b: Path, b_fmt: str) -> bool:
    """qemu-img compare: equal guest-visible bytes (a longer image must be zeros past the end)."""
    return (
        run("qemu-img", "compare", "-q", "-f", a_fmt, "-F", b_fmt, a, b, check=False).returncode
        == 0
    )


# -- legitimate images that were refused ------------------------------------------------------


@pytest.fixture
def extended_l2(tmp_path: Path) -> Path:
    path = tmp_path / "ext.qcow2"
    run(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on,cluster_size=128k",
        path,
        "64M",
    )
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 3M", path)
    return path


@pytest.mark.parametrize("force_raw", [True, False])
def test_qcow2_with_extended_l2_is_accepted(
    settings: Settings, extended_l2: Path, force_raw: bool
) -> None:
    host = make_host(settings, force_raw_images=force_raw)
    cached = host.fetch_image(ImageRequest(str(extended_l2)))
    assert cached.record.format == ("raw" if force_raw else "qcow2")
    assert same_contents(extended_l2, "qcow2", cached.path, cached.record.format)
    inst = host.create_instance(
        InstanceSpec("vm1", UUID, Flavor("t", 1, 256, 1)), ImageRequest(str(extended_l2))
    )
    assert same_contents(extended_l2, "qcow2", inst.path / "disk", "qcow2")


@pytest.mark.parametrize("images_type", [ImagesType.DEFAULT, ImagesType.FLAT])
def test_vhdx_without_force_raw_makes_a_working_disk(
    settings: Settings, tmp_path: Path, images_type: ImagesType
) -> None:
    raw = random_raw(tmp_path / "src.raw")
    vhdx = tmp_path / "src.vhdx"
    run("qemu-img", "convert", "-q", "-f", "raw", "-O", "vhdx", raw, vhdx)
    lib = dataclasses.replace(settings.libvirt, images_type=images_type)
    host = make_host(settings, force_raw_images=False, libvirt=lib)
    inst = host.create_instance(
        InstanceSpec("vm1", UUID, Flavor("t", 1, 256, 1)), ImageRequest(str(vhdx))
    )
    fmt = "qcow2" if images_type is ImagesType.DEFAULT else "raw"
    assert same_contents(raw, "raw", inst.path / "disk", fmt)
    cached = host.cache.lookup(host.resolve(ImageRequest(str(vhdx))).name)
    assert cached is not None and cached.record.format == "raw"
    assert sha256(cached.path) != ""


# -- 1. pinning holds on a cache hit ----------------------------------------------------------


def test_a_hit_under_another_source_is_refused_and_replace_takes_over(
    settings: Settings, tmp_path: Path
) -> None:
    from tests.httpserver import Route, serve
    from vmdisk.errors import CacheEntryConflict
    from vmdisk.imagecache.records import Checksum

    host = make_host(settings)
    evil, good = random_raw(tmp_path / "evil.raw"), random_raw(tmp_path / "good.raw")
    with serve({"/good.raw": Route(good.read_bytes())}) as srv:
        url = srv.url("/good.raw")
        host.fetch_image(ImageRequest(str(evil), image_id=url))  # planted under the URL's id
        pinned = ImageRequest(url, checksum=Checksum("sha256", sha256(good)))
        with pytest.raises(CacheEntryConflict) as err:
            host.fetch_image(pinned)
        assert err.value.reason == "source-mismatch" and err.value.exit_code == 4
        assert str(evil) in err.value.message and url in err.value.message
        assert "--replace" in (err.value.hint or "")
        with pytest.raises(CacheEntryConflict):
            host.create_instance(InstanceSpec("vm1", UUID, Flavor("t", 1, 256, 1)), pinned)
        assert srv.hits["/good.raw"] == 0 and host.instances() == []
        cached = host.fetch_image(dataclasses.replace(pinned, replace=True))
        assert srv.hits["/good.raw"] == 1 and not cached.cached
    assert sha256(cached.path) == sha256(good)
    assert host.fetch_image(pinned).cached  # the pins hold now


@pytest.mark.parametrize("pin", ["sha256", "md5", "sha512-unrecorded", "format", "max_size"])
def test_a_hit_that_contradicts_a_pin_is_refused(
    settings: Settings, tmp_path: Path, pin: str
) -> None:
    import hashlib

    from vmdisk.errors import CacheEntryConflict
    from vmdisk.imagecache.records import Checksum

    host = make_host(settings)
    img = random_raw(tmp_path / "a.raw")
    host.fetch_image(
        ImageRequest(str(img), checksum=Checksum("md5", hashlib.md5(img.read_bytes()).hexdigest()))
    )
    wrong = {
        "sha256": ImageRequest(str(img), checksum=Checksum("sha256", "0" * 64)),
        "md5": ImageRequest(str(img), checksum=Checksum("md5", "0" * 32)),
        "sha512-unrecorded": ImageRequest(str(img), checksum=Checksum("sha512", "0" * 128)),
        "format": ImageRequest(str(img), declared_format="qcow2"),
        "max_size": ImageRequest(str(img), max_size=MiB),
    }[pin]
    with pytest.raises(CacheEntryConflict) as err:
        host.fetch_image(wrong)
    # the fetch computed md5 (its pin) and the tree digest, not a plain sha256
    reason = {
        "sha256": "checksum-unverifiable",
        "sha512-unrecorded": "checksum-unverifiable",
        "format": "format-mismatch",
    }
    assert err.value.reason == reason.get(
        pin, "too-large" if pin == "max_size" else "checksum-mismatch"
    )
    assert err.value.exit_code == 4
    # the right pins still hit
    md5 = Checksum("md5", hashlib.md5(img.read_bytes()).hexdigest())
    right = ImageRequest(str(img), checksum=md5, declared_format="raw")
    assert host.fetch_image(right).cached


# -- 2. sizes refused before anything expands -------------------------------------------------


def qcow2_bomb(path: Path, virtual: str = "8G") -> Path:
    """A small qcow2 whose header declares a big disk: only the header is needed to refuse."""
    run("qemu-img", "create", "-q", "-f", "qcow2", path, virtual)
    run("qemu-io", "-f", "qcow2", "-c", "write -c -P 0x41 0 64k", path)
    return path


def test_flavor_root_is_checked_against_the_header_before_qemu_img(
    settings: Settings, tmp_path: Path
) -> None:
    from vmdisk.errors import FlavorDiskSmallerThanImage

    bomb = qcow2_bomb(tmp_path / "bomb.qcow2")
    host = make_host(settings)
    calls_before = host.runner.calls
    with pytest.raises(FlavorDiskSmallerThanImage) as err:
        host.create_instance(
            InstanceSpec("vm1", UUID, Flavor("t", 1, 256, 1)), ImageRequest(str(bomb))
        )
    assert err.value.reason == "flavor-too-small" and "8.0 GiB" in err.value.message
    assert host.runner.calls == calls_before  # not even qemu-img info ran
    assert base_files(host) == [] and host.instances() == []


def test_flavor_too_small_is_refused_at_the_first_chunk(settings: Settings, tmp_path: Path) -> None:
    from tests.httpserver import Route, serve
    from vmdisk.errors import FlavorDiskSmallerThanImage

    bomb = qcow2_bomb(tmp_path / "bomb.qcow2")
    body = bomb.read_bytes() + bytes(64 * MiB)  # the tail comes slowly: we must not wait for it
    host = make_host(settings)
    with serve({"/b.qcow2": Route(body, rate=4 * MiB)}) as srv:
        start = time.monotonic()
        with pytest.raises(FlavorDiskSmallerThanImage):
            host.create_instance(
                InstanceSpec("vm1", UUID, Flavor("t", 1, 256, 1)), ImageRequest(srv.url("/b.qcow2"))
            )
        assert time.monotonic() - start < 5  # the whole body takes 16 s
    assert base_files(host) == [] and host.instances() == []


def test_endless_raw_body_stops_at_max_size(settings: Settings) -> None:
    import socket
    import threading

    from vmdisk.errors import ImageTooLarge

    sent = [0]
    srv = socket.create_server(("127.0.0.1", 0))

    def endless() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        chunk = b"\xaa" * 65536
        try:
            while sent[0] < 512 * MiB:
                conn.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:
            pass
        conn.close()

    threading.Thread(target=endless, daemon=True).start()
    host = make_host(settings)
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/endless"
    with pytest.raises(ImageTooLarge) as err:
        host.fetch_image(ImageRequest(url, declared_format="raw", max_size=MiB))
    srv.close()
    assert err.value.exit_code == 4 and err.value.reason == "too-large"
    assert sent[0] < 8 * MiB  # stopped at ~1 MiB (plus what the socket buffers held)
    assert base_files(host) == []


def test_a_sparse_raw_larger_than_free_space_is_accepted(tmp_path: Path) -> None:
    from tests.integration.test_reliability import small_filesystem

    sparse = tmp_path / "sparse.raw"
    with open(sparse, "wb") as fh:
        fh.write(b"\x55" * MiB)
        fh.truncate(1024 * MiB)  # 1 GiB apparent, 1 MiB of data
    qcow = tmp_path / "sparse.qcow2"
    run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", sparse, qcow)
    with small_filesystem(tmp_path, 64) as fs:
        host = Host(load_settings(None, env={}, overrides={"instances_path": str(fs / "inst")}))
        host.prepare()
        assert host.fetch_image(ImageRequest(str(sparse))).record.virtual_size == 1024 * MiB
        assert host.fetch_image(ImageRequest(str(qcow))).record.format == "raw"


# -- time bombs: a drip feed -----------------------------------------------------------------


@pytest.mark.parametrize("no_length", [False, True])
def test_a_drip_fed_body_is_abandoned_for_its_rate(settings: Settings, no_length: bool) -> None:
    from tests.httpserver import Route, serve
    from vmdisk.errors import ImageFetchError

    cache = dataclasses.replace(
        settings.image_cache, download_min_rate=1024, download_rate_window=2, download_deadline=60
    )
    host = make_host(settings, image_cache=cache)
    drip = Route(bytes(MiB), rate=10, no_length=no_length, ranges=False)  # 10 bytes/s
    with serve({"/drip": drip}) as srv:
        start = time.monotonic()
        with pytest.raises(ImageFetchError) as err:
            host.fetch_image(ImageRequest(srv.url("/drip")))
        assert time.monotonic() - start < 10
    assert err.value.reason == "download-too-slow" and "bytes/s" in err.value.message
    assert base_files(host) == []


def test_a_body_past_its_deadline_is_abandoned(settings: Settings) -> None:
    from tests.httpserver import Route, serve
    from vmdisk.errors import ImageFetchError

    cache = dataclasses.replace(settings.image_cache, download_min_rate=1, download_deadline=2)
    host = make_host(settings, image_cache=cache)
    with serve({"/slow": Route(bytes(16 * MiB), rate=MiB)}) as srv:
        start = time.monotonic()
        with pytest.raises(ImageFetchError) as err:
            host.fetch_image(ImageRequest(srv.url("/slow")))
        assert time.monotonic() - start < 8
    assert err.value.reason == "download-deadline"
    assert base_files(host) == []


# -- 3. qemu-img CPU bounded by what is there; a limit kill is a refusal ----------------------


def test_convert_cpu_is_bounded_by_the_file_not_the_declared_size() -> None:
    from vmdisk.imagecache.intake import CONVERT_CPU_CEILING, convert_cpu_limit

    tiny_file_huge_header = convert_cpu_limit(30, 64 * 1024)  # virtual size plays no part
    assert tiny_file_huge_header == 50
    assert convert_cpu_limit(30, 10**15) == CONVERT_CPU_CEILING


def test_a_limit_kill_is_a_resource_limit_refusal(settings: Settings, tmp_path: Path) -> None:
    from vmdisk.errors import UnsafeImage
    from vmdisk.tools.runner import Limits

    bomb = qcow2_bomb(tmp_path / "b.qcow2", "64M")
    host = make_host(settings)
    # An address space no qemu-img can start in: the kill path, without burning a CPU minute.
    host.qemu.limits = Limits(address_space=8 * MiB, cpu_seconds=1)
    with pytest.raises(UnsafeImage) as err:
        host.fetch_image(ImageRequest(str(bomb)))
    assert err.value.reason == "resource-limit" and err.value.exit_code == 4
    assert "exit code" not in err.value.message
    assert base_files(host) == []


def test_check_killed_by_a_signal_is_a_limit_not_an_exit_code(tmp_path: Path) -> None:
    from vmdisk.errors import ToolLimitExceeded
    from vmdisk.tools.qemu_img import QemuImg
    from vmdisk.tools.runner import Limits, SubprocessRunner

    img = qcow2_bomb(tmp_path / "c.qcow2", "64M")
    # A real qemu-img check under a CPU limit of 1 s that it cannot meet: SIGXCPU, rc -24
    # (the runner's shim spins before exec'ing qemu-img so the kill is certain).
    shim = tmp_path / "qemu-img"
    shim.write_text("#!/bin/sh\nwhile :; do :; done\n")
    shim.chmod(0o755)
    qemu = QemuImg(SubprocessRunner(), Limits(cpu_seconds=1))
    qemu.runner._which["qemu-img"] = str(shim)  # type: ignore[attr-defined]
    with pytest.raises(ToolLimitExceeded) as err:
        qemu.check(img, "qcow2")
    assert err.value.reason == "resource-limit" and "signal" in err.value.message


# -- 4. children die with their parent --------------------------------------------------------


def test_a_limited_child_dies_with_its_killed_parent(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    code = (
        "from vmdisk.tools.runner import Limits, SubprocessRunner\n"
        "SubprocessRunner().run(['sleep', '60'], limits=Limits(cpu_seconds=30))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    deadline = time.monotonic() + 10
    while not children.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int(children.read_text().split()[0])
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        stat = Path(f"/proc/{child}/stat").read_text() if Path(f"/proc/{child}").exists() else ""
        if stat.split(") ")[-1].startswith("Z"):
            break  # dead, waiting to be reaped by init
        time.sleep(0.02)
    alive = Path(f"/proc/{child}").exists() and not Path(f"/proc/{child}/stat").read_text().split(
        ") "
    )[-1].startswith("Z")
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the orphaned child kept running"


# -- 5. a waiter names the holder and gives up at its deadline --------------------------------


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def start(self, label: str, total: int | None) -> None:
        self.lines.append(label)

    def advance(self, n: int) -> None:
        pass

    def done(self) -> None:
        pass


def test_a_waiter_says_who_holds_the_lock_and_gives_up(settings: Settings, tmp_path: Path) -> None:
    import subprocess
    import sys

    from vmdisk.errors import LockTimeout
    from vmdisk.locks import Locks

    img = random_raw(tmp_path / "a.raw")
    host = make_host(settings)
    name = host.resolve(ImageRequest(str(img))).name
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom vmdisk.locks import Locks\n"
            f"with Locks(Path({str(host.settings.locks_dir)!r})).exclusive({name!r}):\n"
            "    print('held', flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        lines = Lines()
        host.cache.locks = Locks(host.settings.locks_dir, timeout=1)
        host.cache.intake.progress = lines
        with pytest.raises(LockTimeout) as err:
            host.fetch_image(ImageRequest(str(img)))
    finally:
        holder.kill()
        holder.wait()
    assert lines.lines == [
        f"waiting for pid {holder.pid}, which holds lock {name} (fetching {img})"
    ]
    assert f"held by pid {holder.pid}" in err.value.message and err.value.reason == "lock-timeout"
    assert base_files(host) == []


# -- 7. inode exhaustion in _base ------------------------------------------------------------


def test_inode_exhaustion_is_insufficient_space_and_leaves_nothing(tmp_path: Path) -> None:
    import os

    from tests.images import vmdisk_argv
    from tests.integration.test_reliability import small_filesystem

    img = random_raw(tmp_path / "a.raw", MiB)
    with small_filesystem(tmp_path, 16) as fs:
        inst = fs / "inst"
        host = Host(load_settings(None, env={}, overrides={"instances_path": str(inst)}))
        host.prepare()
        n = 0
        try:
            while True:
                (fs / f"f{n}").touch()
                n += 1
        except OSError:
            pass
        before = sorted(os.listdir(inst / "_base"))
        import subprocess

        done = subprocess.run(
            vmdisk_argv(inst, "image", "fetch", str(img)),
            check=False,
            capture_output=True,
            text=True,
        )
        import json

        error = json.loads(done.stdout)["error"]
        assert done.returncode == 1, done.stdout
        assert error["type"] == "InsufficientSpace" and error["reason"] == "insufficient-space"
        assert "inodes" in error["message"] and "Traceback" not in done.stderr
        assert sorted(os.listdir(inst / "_base")) == before
        (fs / "f0").unlink()  # one inode for the lock file; the .part file still cannot be made
        done = subprocess.run(
            vmdisk_argv(inst, "image", "fetch", str(img)),
            check=False,
            capture_output=True,
            text=True,
        )
        error = json.loads(done.stdout)["error"]
        assert done.returncode == 1 and error["reason"] == "insufficient-space", done.stdout
        assert sorted(os.listdir(inst / "_base")) == before


def test_conversion_is_measured_against_free_space_first(tmp_path: Path) -> None:
    from tests.integration.test_reliability import small_filesystem
    from vmdisk.errors import InsufficientSpace

    dense = tmp_path / "dense.raw"
    dense.write_bytes(b"compressible " * (80 * MiB // 13))  # 80 MiB of data as raw
    packed = tmp_path / "packed.qcow2"
    run("qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", dense, packed)
    assert packed.stat().st_size < 4 * MiB
    with small_filesystem(tmp_path, 64) as fs:
        host = Host(load_settings(None, env={}, overrides={"instances_path": str(fs / "inst")}))
        host.prepare()
        with pytest.raises(InsufficientSpace) as err:
            host.fetch_image(ImageRequest(str(packed)))
        assert "the conversion to raw: needs 80" in err.value.message
        assert base_files(host) == []


def test_a_killed_fetch_leaves_no_conversion_running(tmp_path: Path) -> None:
    """SIGKILL the CLI while qemu-img converts: the conversion dies with it, and the next
    fetch's conversion is the only one alive while it runs."""
    import os
    import shutil
    import signal
    import subprocess

    from tests.images import vmdisk_argv

    real = shutil.which("qemu-img")
    assert real is not None
    shims = tmp_path / "bin"
    shims.mkdir()
    log = tmp_path / "converts.log"
    # A qemu-img that, for convert, logs its pid and waits before becoming the real one: the
    # same process (exec), as the real qemu-img is the runner's direct child.
    (shims / "qemu-img").write_text(
        "#!/usr/bin/python3\nimport os, sys, time\n"
        "if sys.argv[1] == 'convert':\n"
        f"    open({str(log)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        "    time.sleep(float(os.environ.get('SHIM_DELAY', '0')))\n"
        f"os.execv({real!r}, [{real!r}, *sys.argv[1:]])\n"
    )
    (shims / "qemu-img").chmod(0o755)
    img = tmp_path / "a.qcow2"
    raw = random_raw(tmp_path / "a.raw")
    run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, img)
    inst = tmp_path / "inst"
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "SHIM_DELAY": "60"}
    first = subprocess.Popen(vmdisk_argv(inst, "image", "fetch", str(img)), env=env)
    deadline = time.monotonic() + 20
    while not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphan = int(log.read_text().split()[0])
    first.send_signal(signal.SIGKILL)
    first.wait()
    deadline = time.monotonic() + 5
    while _alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(orphan):
        os.kill(orphan, signal.SIGKILL)
        raise AssertionError("the conversion outlived the fetch that started it")
    env["SHIM_DELAY"] = "0"
    done = subprocess.run(
        vmdisk_argv(inst, "image", "fetch", str(img)), env=env, check=False, capture_output=True
    )
    assert done.returncode == 0, done.stdout
    assert len(log.read_text().split()) == 2
    base = next(p for p in (inst / "_base").iterdir() if p.suffix == "")
    assert sha256(base) == sha256(raw)
    assert not [p for p in (inst / "_base").iterdir() if ".part-" in p.name]


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
