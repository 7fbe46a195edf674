"""The LVM backend against a FAKE lvm2 (tests/fakelvm.py): names, commands, thin linked clones,
volume_clear and the cleaner's view of base volumes. Real device-mapper runs in tests/lvm."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.fakelvm import FakeLvm2, FakeVolume
from vmdisk import host as host_module
from vmdisk.backends import BackendDeps, open_backend
from vmdisk.backends.base import VolumePrune
from vmdisk.backends.lvm import LvmBackend, volume_name
from vmdisk.cli.main import cli
from vmdisk.errors import DiskMissing, SettingsError
from vmdisk.imagecache.cleaner import Action, CleanupPlan, Decision
from vmdisk.imagecache.entries import EntryKind
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


def files_plan(*decisions: tuple[str, Action, float]) -> CleanupPlan:
    """The `_base` half of a prune pass, as plan_cleanup would have decided it."""
    made = [Decision(n, EntryKind.ORIGINAL, a, f"{a}d", age, 0, 0.0) for n, a, age in decisions]
    return CleanupPlan(tuple(made), 0.0, 0)


def thin_bases(settings: Settings, tmp_path: Path) -> tuple[LvmBackend, FakeLvm2]:
    """Four imported bases: a (a root snapshots it), b, c and d (no snapshots left)."""
    lvm = FakeLvm2()
    lvm.add_pool()
    b = backend(settings, lvm, images_thin_pool="pool")
    b.ensure_disk(root(), tmp_path / "t", base(tmp_path, name="a" * 40))
    for n in "bcd":
        other = dataclasses.replace(root(), owner=n)
        b.ensure_disk(other, tmp_path / "t", base(tmp_path, name=n * 40))
        b.discard([other])
    lvm.volumes["vmdisk_base_" + "e" * 40 + ".tmp-1234"] = FakeVolume(GiB, "Vwi-a-tz--", "pool")
    for n in "abcd":  # a cleaner pass has removed the files of the bases it removes
        (tmp_path / (n * 40)).unlink()
    return b, lvm


def test_pruning_never_removes_a_base_with_snapshots(settings: Settings, tmp_path: Path) -> None:
    b, lvm = thin_bases(settings, tmp_path)
    files = files_plan(("c" * 40, Action.KEEP, 60.0), ("d" * 40, Action.REMOVE, 2e5))
    out = b.prune_bases(files, set(), tmp_path, remove_unused=True, dry_run=False)
    got = {d.base[0]: (d.action, d.reason) for d in out.decisions}
    assert got["a"] == (Action.KEEP, f"1 thin snapshot(s) of it: {UUID}_disk")
    assert got["b"] == (Action.REMOVE, "no snapshots, and its _base entry is gone")
    assert got["c"] == (Action.KEEP, "follows its _base entry: keepd")  # too young
    assert got["d"] == (Action.REMOVE, "no snapshots; its _base entry goes too (removed)")
    assert len(out.decisions) == 4  # the .tmp- import is left to the next import
    assert out.removed == ["vmdisk_base_" + "b" * 40, "vmdisk_base_" + "d" * 40]
    assert sorted(n for n in lvm.volumes if n.startswith("vmdisk_base_")) == [
        "vmdisk_base_" + "a" * 40,
        "vmdisk_base_" + "c" * 40,
        "vmdisk_base_" + "e" * 40 + ".tmp-1234",
    ]
    assert not [c for c in lvm.other if c[0] in ("blkdiscard", "shred")]  # image bytes only
    assert {d.age for d in out.decisions} == {None, 60.0, 2e5}


def test_in_use_switched_off_and_dry_run_remove_nothing(settings: Settings, tmp_path: Path) -> None:
    b, lvm = thin_bases(settings, tmp_path)
    before = dict(lvm.volumes)
    used = b.prune_bases(files_plan(), {"b" * 40}, tmp_path, remove_unused=True, dry_run=False)
    assert {d.base[0]: d.reason for d in used.decisions}["b"] == "its base is in use"
    lvm.volumes = dict(before)
    off = b.prune_bases(files_plan(), set(), tmp_path, remove_unused=False, dry_run=False)
    assert {d.action for d in off.decisions} == {Action.KEEP} and not off.removed
    dry = b.prune_bases(files_plan(), set(), tmp_path, remove_unused=True, dry_run=True)
    assert [d.base[0] for d in dry.decisions if d.action is Action.REMOVE] == ["b", "c", "d"]
    assert dry.removed == [] and lvm.volumes.keys() == before.keys()


def test_a_base_back_or_snapshotted_at_removal_is_kept(settings: Settings, tmp_path: Path) -> None:
    """Re-checked under the entry's lock: a _base file fetched again since the plan, or a new
    snapshot of the volume, keeps it."""
    b, lvm = thin_bases(settings, tmp_path)
    plan = b.prune_bases(files_plan(), set(), tmp_path, remove_unused=True, dry_run=True)
    (tmp_path / ("b" * 40)).write_bytes(b"fetched again")
    lvm.volumes["late_disk"] = FakeVolume(GiB, "Vwi-a-tz--", "pool", "vmdisk_base_" + "d" * 40)
    out = VolumePrune(plan.decisions)
    for d in plan.decisions:
        if d.action is Action.REMOVE:
            b._remove_base(d, tmp_path, out)
    assert out.kept_on_recheck == ["vmdisk_base_" + "b" * 40, "vmdisk_base_" + "d" * 40]
    assert out.removed == ["vmdisk_base_" + "c" * 40]
    assert "vmdisk_base_" + "b" * 40 in lvm.volumes and "vmdisk_base_" + "d" * 40 in lvm.volumes
    assert not b.deps.locks.path("c" * 40).exists()  # its lock file goes with it


def test_file_backends_keep_no_base_volumes(settings: Settings, tmp_path: Path) -> None:
    lvm = FakeLvm2()
    locks = Locks(settings.locks_dir)
    deps = BackendDeps(
        QemuImg(lvm, Limits(None, None)), lvm, TemplateCache(settings.base_dir, locks), locks,
        settings.libvirt,
    )  # fmt: skip
    qcow2 = open_backend(BackendName.QCOW2, deps)
    out = qcow2.prune_bases(files_plan(), set(), tmp_path, remove_unused=True, dry_run=False)
    assert out == VolumePrune() and lvm.calls == []


def test_cache_prune_json_reports_the_base_volumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vmdisk --json cache prune` on a thin-pool host, the FAKE lvm2 as the Host's runner: the
    base LV with a snapshot is kept, the orphan is removed, both in the plan and the result."""
    lvm = FakeLvm2()
    lvm.add_pool()
    kept, orphan = "vmdisk_base_" + "a" * 40, "vmdisk_base_" + "b" * 40
    for name in (kept, orphan):
        lvm.volumes[name] = FakeVolume(GiB, "Vri-a-tz--", "pool", data_percent="50.00")
    lvm.volumes[f"{UUID}_disk"] = FakeVolume(GiB, "Vwi-a-tz--", "pool", kept)
    config = tmp_path / "vmdisk.toml"
    config.write_text(
        f'instances_path = "{tmp_path / "i"}"\n[libvirt]\nimages_type = "lvm"\n'
        'images_volume_group = "vg0"\nimages_thin_pool = "pool"\n'
    )
    monkeypatch.setattr(host_module, "SubprocessRunner", lambda: lvm)
    for dry in (True, False):
        argv = ["--config", str(config), "--json", "cache", "prune"] + ["--dry-run"] * dry
        done = CliRunner().invoke(cli, argv, env={})
        assert done.exit_code == 0, done.output
        data = json.loads(done.output)
        volumes = {v["name"]: v for v in data["plan"]["volumes"]}
        assert volumes[kept]["action"] == "keep" and "snapshot" in volumes[kept]["reason"]
        assert volumes[orphan]["action"] == "remove" and volumes[orphan]["kind"] == "base-volume"
        assert data["plan"]["volumes_would_free"] == GiB // 2
        assert (orphan in lvm.volumes) is dry and (data["result"] is None) is dry
    assert data["result"]["volumes"] == {"removed": [orphan], "kept_on_recheck": [], "errors": {}}
    assert orphan not in lvm.volumes and kept in lvm.volumes


def test_lvm_needs_a_volume_group(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="images_volume_group"):
        load_settings(
            None,
            env={},
            overrides={"instances_path": str(tmp_path), "libvirt": {"images_type": "lvm"}},
        )
