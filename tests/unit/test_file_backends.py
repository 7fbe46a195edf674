"""qcow2 and flat backends against the FakeRunner: the argv they run, where disks are, how they
grow, what a boot checks. qemu-img itself is exercised in tests/integration."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.fakes import FakeRunner
from vmdisk.backends import BackendDeps, open_backend
from vmdisk.backends.qcow2 import ensure_legacy_backing
from vmdisk.errors import DiskMissing, NotSupported
from vmdisk.imagecache.records import BaseRecord
from vmdisk.imagecache.store import CachedImage
from vmdisk.imagecache.templates import TemplateCache
from vmdisk.locks import Locks
from vmdisk.model import (
    BackendName,
    DiskPlan,
    DiskRole,
    FileSource,
    NetworkSource,
    ProvisionedDisk,
)
from vmdisk.record import DiskEntry
from vmdisk.settings import Settings
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import Limits
from vmdisk.units import GiB, MiB


def qcow2_header(backing: str = "", size: int = GiB) -> bytes:
    """A qcow2 v3 header as tools/headers.py reads it (magic, backing offset/len, size)."""
    name = backing.encode()
    head = struct.pack(">4sIQIIQ", b"QFI\xfb", 3, 104 if name else 0, len(name), 16, size)
    return head.ljust(104, b"\0") + name


@pytest.fixture
def deps(settings: Settings, tmp_path: Path) -> tuple[BackendDeps, FakeRunner]:
    settings.base_dir.mkdir(parents=True)
    settings.locks_dir.mkdir(parents=True)
    runner = FakeRunner()
    locks = Locks(settings.locks_dir)
    qemu = QemuImg(runner, Limits(None, None))
    return BackendDeps(
        qemu, runner, TemplateCache(settings.base_dir, locks), locks, settings.libvirt
    ), runner


def _base(tmp_path: Path, size: int = MiB) -> CachedImage:
    path = tmp_path / "b"
    path.write_bytes(b"x" * 512)
    record = BaseRecord("i", "i", None, "raw", "raw", size, 512, "0", "0", "now", cluster_size=None)
    return CachedImage("i", "b", path, record, cached=True)


def _argvs(runner: FakeRunner) -> list[list[str]]:
    return [argv for argv, _ in runner.seen]


def test_qcow2_root_is_an_overlay_with_explicit_backing_format(
    deps: tuple[BackendDeps, FakeRunner], tmp_path: Path
) -> None:
    d, runner = deps
    disk = DiskPlan("disk", DiskRole.ROOT, tmp_path / "i" / "disk", "qcow2", GiB, base="b")
    with open_backend(BackendName.QCOW2, d) as backend:
        made = backend.ensure_disk(disk, tmp_path / "build-disk", _base(tmp_path))
    assert made == ProvisionedDisk(FileSource(tmp_path / "i" / "disk"), "qcow2")
    (argv,) = _argvs(runner)
    assert argv[:5] == ["qemu-img", "create", "-q", "-f", "qcow2"]
    assert "-F" in argv and argv[argv.index("-F") + 1] == "raw"
    assert str(tmp_path / "b") in argv[argv.index("-b") + 1]
    assert argv[-1] == str(GiB)


def test_an_existing_disk_is_not_made_again(
    deps: tuple[BackendDeps, FakeRunner], tmp_path: Path
) -> None:
    d, runner = deps
    target = tmp_path / "disk"
    target.write_bytes(b"already")
    disk = DiskPlan("disk", DiskRole.ROOT, target, "qcow2", GiB, base="b")
    open_backend(BackendName.QCOW2, d).ensure_disk(disk, target, _base(tmp_path))
    assert runner.calls == 0


def test_a_root_without_a_base_is_not_supported(
    deps: tuple[BackendDeps, FakeRunner], tmp_path: Path
) -> None:
    disk = DiskPlan("disk", DiskRole.ROOT, tmp_path / "disk", "qcow2", GiB)
    with pytest.raises(NotSupported):
        open_backend(BackendName.QCOW2, deps[0]).ensure_disk(disk, tmp_path / "disk", None)


def test_qcow2_swap_is_an_overlay_on_a_template_made_once(
    deps: tuple[BackendDeps, FakeRunner], settings: Settings, tmp_path: Path
) -> None:
    d, runner = deps
    backend = open_backend(BackendName.QCOW2, d)
    for n in (1, 2):
        disk = DiskPlan(
            "disk.swap", DiskRole.SWAP, tmp_path / "disk.swap", "qcow2", 64 * MiB, base="swap_64"
        )
        backend.ensure_disk(disk, tmp_path / f"swap{n}", None)
    argvs = _argvs(runner)
    assert [a[0] for a in argvs] == ["mkswap", "qemu-img", "qemu-img"]
    assert (settings.base_dir / "swap_64").stat().st_size == 64 * MiB


def test_flat_root_is_a_sparse_copy_grown_to_the_flavor(
    deps: tuple[BackendDeps, FakeRunner], tmp_path: Path
) -> None:
    d, runner = deps
    target = tmp_path / "disk"
    disk = DiskPlan("disk", DiskRole.ROOT, target, "raw", GiB, base="b")
    made = open_backend(BackendName.FLAT, d).ensure_disk(disk, target, _base(tmp_path))
    assert made.driver_format == "raw"
    assert target.read_bytes() == b"x" * 512
    (argv,) = _argvs(runner)
    assert argv[:5] == ["qemu-img", "resize", "-q", "-f", "raw"] and argv[-1] == str(GiB)


def test_flat_ephemeral_is_made_in_place_with_its_label(
    deps: tuple[BackendDeps, FakeRunner], tmp_path: Path
) -> None:
    d, runner = deps
    target = tmp_path / "disk.local"
    disk = DiskPlan(
        "disk.local", DiskRole.EPHEMERAL, target, "raw", GiB, fs="ext4", label="ephemeral0"
    )
    open_backend(BackendName.FLAT, d).ensure_disk(disk, target, None)
    assert target.stat().st_size == GiB and target.stat().st_blocks == 0
    (argv,) = _argvs(runner)
    assert argv[0] == "mkfs" and "ephemeral0" in argv and str(target) == argv[-1]


def test_describe_reads_the_header_and_resize_pins_the_format(
    deps: tuple[BackendDeps, FakeRunner], tmp_path: Path
) -> None:
    d, runner = deps
    disk = tmp_path / "disk"
    disk.write_bytes(qcow2_header(str(tmp_path / "base"), 2 * GiB))
    entry = DiskEntry("disk", DiskRole.ROOT, "qcow2", FileSource(disk))
    backend = open_backend(BackendName.QCOW2, d)
    state = backend.describe(entry)
    assert (state.virtual_size, state.backing_file) == (2 * GiB, str(tmp_path / "base"))
    assert state.to_dict(entry)["path"] == str(disk)
    backend.resize(entry, 3 * GiB)
    assert _argvs(runner) == [["qemu-img", "resize", "-q", "-f", "qcow2", str(disk), str(3 * GiB)]]


def test_describe_of_a_missing_disk_says_so(deps: tuple[BackendDeps, FakeRunner]) -> None:
    entry = DiskEntry("disk", DiskRole.ROOT, "raw", FileSource(Path("/nonexistent/disk")))
    state = open_backend(BackendName.FLAT, deps[0]).describe(entry)
    assert state.virtual_size is None and state.error and "disk" in state.to_dict(entry)["error"]


def test_check_present_refuses_missing_disks_and_bases(
    deps: tuple[BackendDeps, FakeRunner], tmp_path: Path
) -> None:
    backend = open_backend(BackendName.QCOW2, deps[0])
    missing = DiskEntry("disk", DiskRole.ROOT, "qcow2", FileSource(tmp_path / "nope"))
    with pytest.raises(DiskMissing) as err:
        backend.check_present(missing, tmp_path)
    assert err.value.reason == "disk-missing"
    disk = tmp_path / "disk"
    disk.write_bytes(qcow2_header(str(tmp_path / "gone")))
    with pytest.raises(DiskMissing) as err:
        backend.check_present(DiskEntry("disk", DiskRole.ROOT, "qcow2", FileSource(disk)), tmp_path)
    assert err.value.reason == "base-missing"
    with pytest.raises(NotSupported):
        backend.check_present(
            DiskEntry("disk", DiskRole.ROOT, "raw", NetworkSource("rbd", "p/i")), tmp_path
        )


def test_a_legacy_resized_backing_file_is_regenerated(
    deps: tuple[BackendDeps, FakeRunner], tmp_path: Path
) -> None:
    d, runner = deps
    original = tmp_path / ("a" * 40)
    original.write_bytes(b"o" * 4096)
    legacy = tmp_path / ("a" * 40 + "_2")
    disk = tmp_path / "disk"
    disk.write_bytes(qcow2_header(str(legacy)))
    ensure_legacy_backing(d.locks, d.qemu, disk, "qcow2")
    assert legacy.read_bytes() == b"o" * 4096
    (argv,) = _argvs(runner)
    assert argv[:5] == ["qemu-img", "resize", "-q", "-f", "raw"] and argv[-1] == str(2 * GiB)
    assert Path(argv[5]).name.startswith(legacy.name + ".part-")
    ensure_legacy_backing(d.locks, d.qemu, disk, "qcow2")  # present now: nothing to do
    assert runner.calls == 1
