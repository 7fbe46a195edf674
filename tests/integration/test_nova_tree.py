"""A Nova compute node's instances_path, laid out as Nova lays it (no instance.json, qcow2
disks with backing files into _base, disk.info, Nova's .part/.converted leftovers): `cache list`
and `cache prune` through the real CLI count Nova's instances as users and never remove
what they use."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

from tests.images import MiB, run, vmdisk_argv

NOVA_UUID = "3f1d0c2b-aaaa-4bbb-8ccc-0123456789ab"
DAY = 86400


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def nova_tree(root: Path) -> dict[str, Path]:
    """instances/<uuid>/{disk,disk.local,disk.info,libvirt.xml,console.log} and _base."""
    base_dir = root / "_base"
    base_dir.mkdir(parents=True)
    (root / "locks").mkdir()
    used, unused = base_dir / sha1("img-used"), base_dir / sha1("img-unused")
    eph = base_dir / "ephemeral_1_0706d66"
    for path in (used, unused, eph):
        run("qemu-img", "create", "-q", "-f", "raw", str(path), str(16 * MiB))
    inst = root / NOVA_UUID
    inst.mkdir()
    disk, local = inst / "disk", inst / "disk.local"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(used), "-F", "raw", str(disk))
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(eph), "-F", "raw", str(local))
    (inst / "disk.info").write_text(json.dumps({str(disk): "qcow2", str(local): "qcow2"}))
    (inst / "libvirt.xml").write_text("<domain/>")
    (inst / "console.log").write_text("")
    part = base_dir / f"{sha1('img-crashed')}.part"
    converted = base_dir / f"{sha1('img-crashed2')}.converted"
    part.write_bytes(b"half a download")
    converted.write_bytes(b"half a conversion")
    old = time.time() - 3 * DAY
    for path in (used, unused, eph, part, converted):
        os.utime(path, (old, old))
    return {"used": used, "unused": unused, "eph": eph, "part": part, "converted": converted}


def cli(root: Path, *args: str) -> dict[str, object]:
    out = subprocess.run(vmdisk_argv(root, *args), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_cache_list_counts_nova_instances_as_users(tmp_path: Path) -> None:
    paths = nova_tree(tmp_path)
    listing = cli(tmp_path, "cache", "list")
    users = {e["name"]: e["users"] for e in listing["entries"]}  # type: ignore[index, union-attr]
    assert users[paths["used"].name] == [NOVA_UUID]
    assert users[paths["eph"].name] == [NOVA_UUID]
    assert users[paths["unused"].name] == []
    assert cli(tmp_path, "list") == []  # Nova's instances are not vmdisk's to list


def test_prune_keeps_what_nova_uses_and_removes_leftovers(tmp_path: Path) -> None:
    paths = nova_tree(tmp_path)
    plan = cli(tmp_path, "cache", "prune", "--dry-run")
    text = json.dumps(plan)
    assert paths["unused"].name in text and paths["part"].exists()
    cli(tmp_path, "cache", "prune")
    assert paths["used"].exists() and paths["eph"].exists()
    assert not paths["unused"].exists()
    assert not paths["part"].exists() and not paths["converted"].exists()
    info = json.loads(
        run(
            "qemu-img",
            "info",
            "-U",
            "--output=json",
            "-f",
            "qcow2",
            str(tmp_path / NOVA_UUID / "disk"),
        ).stdout
    )
    assert info["backing-filename"] == str(paths["used"])


def test_prune_survives_a_leftover_probe(tmp_path: Path) -> None:
    paths = nova_tree(tmp_path)
    probe = tmp_path / "_base" / ".directio.test.1a2b3c"
    probe.write_bytes(b"")
    old = time.time() - 3 * DAY
    os.utime(probe, (old, old))
    cli(tmp_path, "cache", "prune")
    assert not probe.exists() and paths["used"].exists()
