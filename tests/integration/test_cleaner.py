"""The cache cleaner on real instances and bases, ages set with os.utime, and under races."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path

import pytest

from tests.images import MiB, ext4_image, qcow2_pointing_at, qemu_info, run
from vmdisk.host import Host
from vmdisk.imagecache.cleaner import CleanupPolicy
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import InstanceSpec
from vmdisk.settings import Flavor, Settings

DAY = 86400
FLAVOR = Flavor("c", 1, 128, 1, ephemeral_gb=1, swap_mb=16)


def age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when))


def listing(directory: Path) -> dict[str, float]:
    return {str(p.relative_to(directory)): p.lstat().st_mtime for p in directory.rglob("*")}


@pytest.fixture
def host(settings: Settings) -> Host:
    return Host(settings)


def images(tmp_path: Path, n: int) -> list[Path]:
    return [
        ext4_image(tmp_path / f"img{i}.raw", {"i": str(i).encode()}, size=4 * MiB) for i in range(n)
    ]


def test_in_use_survive_unused_old_ones_go(host: Host, tmp_path: Path) -> None:
    used, unused, young = images(tmp_path, 3)
    inst = host.create_instance(
        InstanceSpec("keep", str(uuidlib.uuid4()), FLAVOR), ImageRequest(str(used))
    )
    gone = host.fetch_image(ImageRequest(str(unused)))
    fresh = host.fetch_image(ImageRequest(str(young)))
    base_dir = host.settings.base_dir
    for path in base_dir.iterdir():
        age(path, 2 * DAY)
    age(fresh.path, 60)
    leftover = base_dir / f"{gone.name}.part-0123456789ab"
    leftover.write_bytes(b"half a download")
    age(leftover, 2 * 3600)
    stray = base_dir / "notes.txt"
    stray.write_text("an operator's file")
    age(stray, 10 * DAY)
    assert (host.locks.path(gone.name)).exists()

    _, result = host.prune()
    assert result is not None and result.errors == {}
    assert sorted(result.removed) == sorted([gone.name, leftover.name])
    assert not gone.path.exists() and not (base_dir / f"{gone.name}.info").exists()
    assert not host.locks.path(gone.name).exists()  # its lock file went too
    assert fresh.path.exists() and stray.exists()
    root = qemu_info(inst.path / "disk", "qcow2")["backing-filename"]
    assert Path(root).exists() and time.time() - Path(root).stat().st_mtime < 60  # touched
    for name in ("disk.local", "disk.swap"):
        assert Path(qemu_info(inst.path / name, "qcow2")["backing-filename"]).exists()
    assert json.loads((host.settings.instances_path / "compute_nodes").read_text())


def test_backing_file_alone_protects_a_base(host: Host, tmp_path: Path) -> None:
    (image,) = images(tmp_path, 1)
    inst = host.create_instance(
        InstanceSpec("orphan-record", str(uuidlib.uuid4()), Flavor("z", 1, 128, 1)),
        ImageRequest(str(image)),
    )
    record = json.loads((inst.path / "instance.json").read_text())
    record["image_base"] = "0" * 40  # the record no longer names the base...
    (inst.path / "instance.json").write_text(json.dumps(record))
    for path in host.settings.base_dir.iterdir():
        age(path, 30 * DAY)
    _, result = host.prune()
    assert result is not None and result.removed == []  # ...but disk's backing file does
    run("qemu-img", "check", "-f", "qcow2", inst.path / "disk")


def test_dry_run_changes_nothing(host: Host, tmp_path: Path) -> None:
    for image in images(tmp_path, 2):
        host.fetch_image(ImageRequest(str(image)))
    for path in host.settings.base_dir.iterdir():
        age(path, 9 * DAY)
    root = host.settings.instances_path
    before = listing(root)
    plan, result = host.prune(dry_run=True)
    assert result is None and len(plan.by_action(plan.decisions[0].action.REMOVE)) == 2
    assert listing(root) == before


def test_size_cap_evicts_least_recently_used(settings: Settings, tmp_path: Path) -> None:
    capped = dataclasses.replace(
        settings, image_cache=dataclasses.replace(settings.image_cache, max_size=1)
    )
    host = Host(capped)
    older, newer = (host.fetch_image(ImageRequest(str(i))) for i in images(tmp_path, 2))
    age(older.path, 300)
    age(newer.path, 100)
    _, result = host.prune()
    assert result is not None
    assert set(result.removed) >= {older.name, newer.name}


def prune_loop_config(tmp_path: Path, instances: Path) -> Path:
    cfg = tmp_path / "prune.toml"
    cfg.write_text(
        f'instances_path = "{instances}"\n[image_cache]\n'
        "remove_unused_original_minimum_age_seconds = 0\n"
        "remove_unused_resized_minimum_age_seconds = 0\n"
        "remove_unused_template_minimum_age_seconds = 0\n"
        "remove_temporary_minimum_age_seconds = 0\n"
    )
    return cfg


def test_creates_racing_an_aggressive_pruner(host: Host, tmp_path: Path) -> None:
    """Bases old and unused at the start; prune in a loop with every age forced to 0."""
    instances = host.settings.instances_path
    sources = images(tmp_path, 3)
    for src in sources:
        host.fetch_image(ImageRequest(str(src)))
    for path in host.settings.base_dir.iterdir():
        age(path, 30 * DAY)
    cfg = prune_loop_config(tmp_path, instances)
    vmdisk = [sys.executable, "-m", "vmdisk", "--json"]
    pruner = subprocess.Popen(
        [
            "sh",
            "-c",
            f"while true; do {' '.join(vmdisk)} --config {cfg} cache prune "
            f">>{tmp_path}/prune.out 2>>{tmp_path}/prune.err; done",
        ]
    )
    try:
        creators = [
            subprocess.Popen(
                [
                    "sh",
                    "-c",
                    " && ".join(
                        f"{' '.join(vmdisk)} --instances-path {instances} create r{w}x{i} "
                        f"--image {sources[(w + i) % 3]} --vcpus 1 --ram-mb 64 --root-gb 1 "
                        f"--ephemeral-gb 1 --swap-mb 8 >{tmp_path}/create-r{w}x{i}.out "
                        f"|| {{ cat {tmp_path}/create-r{w}x{i}.out >&2; exit 1; }}"
                        for i in range(4)
                    ),
                ],
                stderr=subprocess.PIPE,
            )
            for w in range(3)
        ]
        errors = [c.communicate(timeout=300)[1] for c in creators]
        assert [c.returncode for c in creators] == [0, 0, 0], errors
    finally:
        pruner.terminate()
        pruner.wait()
    runs = (tmp_path / "prune.out").read_text().count('"dry_run": false')
    assert runs >= 3, "the pruner must really have run alongside the creates"
    listed = host.instances()
    assert len(listed) == 12
    for inst in listed:
        for name in ("disk", "disk.local", "disk.swap"):
            disk = inst.path / name
            backing = Path(qemu_info(disk, "qcow2")["backing-filename"])
            assert backing.exists(), f"{inst.record.name}/{name} lost {backing.name}"
            run("qemu-img", "check", "-f", "qcow2", disk)
    _, result = host.prune(
        policy=CleanupPolicy(
            original_min_age=0, resized_min_age=0, template_min_age=0, temporary_min_age=0
        )
    )
    assert result is not None and result.removed == []  # all three images are in use


def test_verify_reports_tampered_bases_and_deletes_nothing(host: Host, tmp_path: Path) -> None:
    good, flipped, disguised = (host.fetch_image(ImageRequest(str(i))) for i in images(tmp_path, 3))
    with open(flipped.path, "r+b") as fh:
        fh.seek(1024 * 1024)
        fh.write(b"\xff")
    header = tmp_path / "h.qcow2"
    qcow2_pointing_at(header, "/etc/passwd")
    with open(disguised.path, "r+b") as fh:
        fh.write(header.read_bytes()[:65536])
    verdicts = {v.name: v for v in host.verify_cache()}
    assert verdicts[good.name].ok
    assert not verdicts[flipped.name].ok and "sha256" in verdicts[flipped.name].problems[0]
    assert not verdicts[disguised.name].ok
    assert any("qcow2" in p for p in verdicts[disguised.name].problems)
    assert flipped.path.exists() and disguised.path.exists()


def test_cache_list_names_the_users(host: Host, tmp_path: Path) -> None:
    (image,) = images(tmp_path, 1)
    host.create_instance(InstanceSpec("u1", str(uuidlib.uuid4()), FLAVOR), ImageRequest(str(image)))
    host.create_instance(InstanceSpec("u2", str(uuidlib.uuid4()), FLAVOR), ImageRequest(str(image)))
    entries = {e.kind: e for e in host.cache_listing().entries}
    assert entries["original"].users == ["u1", "u2"]
    assert entries["swap"].users == ["u1", "u2"]
    assert host.cache_listing().total_allocated > 0
