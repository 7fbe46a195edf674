"""The LVM backend against a FAKE lvm2 (tests/fakelvm.py): names, commands, thin linked clones,
volume_clear and the cleaner's view of base volumes. Real device-mapper runs in tests/lvm."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.fakelvm import FakeLvm2
from vmdisk.backends import BackendDeps, open_backend
from vmdisk.backends.lvm import LvmBackend, volume_name
from vmdisk.errors import DiskMissing, SettingsError
from vmdisk.imagecache.records import BaseRecord
from vmdisk.imagecache.store import CachedImage
from vmdisk.imagecache.templates import TemplateCache
from vmdisk.locks import Locks
from vmdisk.model import BackendName, BlockSource, DiskPlan, DiskRole, FileSource
from vmdisk.record import DiskEntry
from vmdisk.settings import Settings, load_settings
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import Limits
from vmdisk.units import GiB, MiB

UUID = "9e8d7c6b-1111-4222-8333-444455556666"


def backend(settings: Settings, lvm: FakeLvm2, **libvirt: object) -> LvmBackend:
    settings.locks_dir.mkdir(parents=True, exist_ok=True)
    lib = dataclasses.replace(settings.libvirt, images_volume_group="vg0", **libvirt)  # type: ignore[arg-type]
    locks = Locks(settings.locks_dir)
    deps = BackendDeps(
        QemuImg(lvm, Limits(None, None)), lvm, TemplateCache(settings.base_dir, locks), locks, lib
    )
    made = open_backend(BackendName.LVM, deps)
    assert isinstance(made, LvmBackend)
    return made


def base(tmp_path: Path, size: int = 2 * GiB, name: str = "a" * 40) -> CachedImage:
    path = tmp_path / name
    path.write_bytes(b"base")
    record = BaseRecord("img", "img", None, "raw", "raw", size, 4, "0", "0", "now")
    return CachedImage("img", name, path, record, cached=True)


def root(size: int | None = 4 * GiB) -> DiskPlan:
    return DiskPlan("disk", DiskRole.ROOT, Path("/i") / UUID / "disk", "raw", size, owner=UUID)


def test_names_and_sources_follow_nova() -> None:
    assert volume_name(UUID, "disk.local") == f"{UUID}_disk.local"
    assert volume_name(UUID, "disk_x") == f"{UUID}_disk__x"


def test_thick_root_is_the_base_written_whole(settings: Settings, tmp_path: Path) -> None:
    lvm = FakeLvm2()
    made = backend(settings, lvm).ensure_disk(root(), tmp_path / "t", base(tmp_path))
    assert made.source == BlockSource(Path(f"/dev/vg0/{UUID}_disk")) and made.driver_format == "raw"
    assert lvm.volumes[f"{UUID}_disk"].size == 4 * GiB
    (convert,) = [c for c in lvm.other if c[:2] == ["qemu-img", "convert"]]
    assert "-n" in convert and "--target-is-zero" not in convert  # holes are written as zeros
    assert convert[-1] == f"/dev/vg0/{UUID}_disk" and convert[convert.index("-f") + 1] == "raw"


def test_root_gb_zero_takes_the_image_size(settings: Settings, tmp_path: Path) -> None:
    lvm = FakeLvm2()
    backend(settings, lvm).ensure_disk(root(None), tmp_path / "t", base(tmp_path))
    assert lvm.volumes[f"{UUID}_disk"].size == 2 * GiB


def test_sparse_volumes_skip_holes(settings: Settings, tmp_path: Path) -> None:
    lvm = FakeLvm2()
    backend(settings, lvm, sparse_logical_volumes=True).ensure_disk(
        root(), tmp_path / "t", base(tmp_path)
    )
    assert lvm.volumes[f"{UUID}_disk"].attr.startswith("s")
    (convert,) = [c for c in lvm.other if c[:2] == ["qemu-img", "convert"]]
    assert "--target-is-zero" in convert


def test_thin_roots_are_snapshots_of_one_imported_base(settings: Settings, tmp_path: Path) -> None:
    lvm = FakeLvm2()
    lvm.add_pool()
    b = backend(settings, lvm, images_thin_pool="pool")
    image = base(tmp_path)
    for uuid in (UUID, "0" * 8 + UUID[8:]):
        b.ensure_disk(dataclasses.replace(root(), owner=uuid), tmp_path / "t", image)
    parent = f"vmdisk_base_{image.name}"
    assert lvm.volumes[parent].attr[1] == "r" and lvm.volumes[parent].pool == "pool"
    assert lvm.volumes[f"{UUID}_disk"].origin == parent
    assert lvm.volumes[f"{UUID}_disk"].size == 4 * GiB
    converts = [c for c in lvm.other if c[:2] == ["qemu-img", "convert"]]
    assert len(converts) == 1 and "--target-is-zero" in converts[0]  # imported once
    assert not [n for n in lvm.volumes if ".tmp-" in n]
    creates = [c for c in lvm.calls if c[0] == "lvcreate" and f"{UUID}_disk" in c]
    assert creates == [
        ["lvcreate", "-y", "-s", "-kn", "-ay", "-n", f"{UUID}_disk", f"vg0/{parent}"]
    ]


def test_a_failed_import_leaves_no_base_volume(settings: Settings, tmp_path: Path) -> None:
    lvm = FakeLvm2()
    lvm.add_pool()
    b = backend(settings, lvm, images_thin_pool="pool")
    b.lvm.set_read_only = lambda vg, name: (_ for _ in ()).throw(OSError("disk on fire"))  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk on fire"):
        b.ensure_disk(root(), tmp_path / "t", base(tmp_path))
    assert sorted(lvm.volumes) == ["pool"]


def test_blank_disks_are_formatted_on_the_device(settings: Settings, tmp_path: Path) -> None:
    lvm = FakeLvm2()
    b = backend(settings, lvm)
    eph = DiskPlan(
        "disk.local",
        DiskRole.EPHEMERAL,
        Path("/i/disk.local"),
        "raw",
        GiB,
        fs="ext4",
        label="ephemeral0",
        owner=UUID,
    )
    swap = DiskPlan("disk.swap", DiskRole.SWAP, Path("/i/disk.swap"), "raw", 64 * MiB, owner=UUID)
    b.ensure_disk(eph, tmp_path / "e", None)
    b.ensure_disk(swap, tmp_path / "s", None)
    assert [
        "mkfs",
        "-t",
        "ext4",
        "-F",
        "-L",
        "ephemeral0",
        f"/dev/vg0/{UUID}_disk.local",
    ] in lvm.other
    assert ["mkswap", f"/dev/vg0/{UUID}_disk.swap"] in lvm.other
    drive = DiskPlan(
        "disk.config", DiskRole.CONFIG, Path("/i/disk.config"), "raw", None, owner=UUID
    )
    assert b.locate(drive).source == FileSource(Path("/i/disk.config"))


@pytest.mark.parametrize(
    ("clear", "size_mib", "expected"),
    [
        ("zero", 0, ["blkdiscard", "-z", "-o", "0", "-l", str(GiB)]),
        ("zero", 16, ["blkdiscard", "-z", "-o", "0", "-l", str(16 * MiB)]),
        ("shred", 0, ["shred", "-n", "3", "-s", str(GiB)]),
        ("none", 0, None),
    ],
)
def test_volume_clear_runs_before_removal(
    settings: Settings, tmp_path: Path, clear: str, size_mib: int, expected: list[str] | None
) -> None:
    lvm = FakeLvm2()
    b = backend(settings, lvm, volume_clear=clear, volume_clear_size=size_mib)
    b.ensure_disk(root(GiB), tmp_path / "t", base(tmp_path, GiB))
    entry = DiskEntry("disk", DiskRole.ROOT, "raw", BlockSource(Path(f"/dev/vg0/{UUID}_disk")))
    b.remove([entry])
    clears = [c for c in lvm.other if c[0] in ("blkdiscard", "shred")]
    assert clears == ([[*expected, f"/dev/vg0/{UUID}_disk"]] if expected else [])
    assert lvm.calls.index(["lvremove", "-y", f"vg0/{UUID}_disk"]) > len(lvm.calls) - 2
    assert f"{UUID}_disk" not in lvm.volumes


def test_thin_volumes_of_a_zeroing_pool_need_no_clear(settings: Settings, tmp_path: Path) -> None:
    lvm = FakeLvm2()
    lvm.add_pool(zero=True)
    b = backend(settings, lvm, images_thin_pool="pool")
    b.ensure_disk(root(), tmp_path / "t", base(tmp_path))
    b.discard([root()])
    assert not [c for c in lvm.other if c[0] in ("blkdiscard", "shred")]
    assert f"{UUID}_disk" not in lvm.volumes and f"vmdisk_base_{'a' * 40}" in lvm.volumes


def test_describe_resize_and_check(settings: Settings, tmp_path: Path) -> None:
    lvm = FakeLvm2()
    lvm.add_pool()
    b = backend(settings, lvm, images_thin_pool="pool")
    b.ensure_disk(root(), tmp_path / "t", base(tmp_path))
    entry = DiskEntry("disk", DiskRole.ROOT, "raw", BlockSource(Path(f"/dev/vg0/{UUID}_disk")))
    state = b.describe(entry)
    assert state.virtual_size == 4 * GiB and state.backing_file == f"vmdisk_base_{'a' * 40}"
    assert state.allocated is not None and state.allocated < 4 * GiB // 1000
    b.resize(entry, 8 * GiB)
    assert lvm.volumes[f"{UUID}_disk"].size == 8 * GiB
    b.check_present(entry, tmp_path)
    del lvm.volumes[f"{UUID}_disk"]
    with pytest.raises(DiskMissing):
        b.check_present(entry, tmp_path)


def test_the_cleaner_never_removes_a_base_with_snapshots(
    settings: Settings, tmp_path: Path
) -> None:
    lvm = FakeLvm2()
    lvm.add_pool()
    b = backend(settings, lvm, images_thin_pool="pool")
    used, unused = base(tmp_path, name="a" * 40), base(tmp_path, name="b" * 40)
    b.ensure_disk(root(), tmp_path / "t", used)
    b.ensure_disk(dataclasses.replace(root(), owner="x"), tmp_path / "t", unused)
    b.discard([dataclasses.replace(root(), owner="x")])
    assert b.remove_unused_bases(in_use=set()) == [f"vmdisk_base_{'b' * 40}"]
    assert f"vmdisk_base_{'a' * 40}" in lvm.volumes


def test_lvm_needs_a_volume_group(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="images_volume_group"):
        load_settings(
            None,
            env={},
            overrides={"instances_path": str(tmp_path), "libvirt": {"images_type": "lvm"}},
        )
