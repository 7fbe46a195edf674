"""snapshot, clone, export and import through the real CLI, checked with qemu-img compare,
qemu-img info, sha256 of independent conversions and isoinfo on the config drive."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.images import MiB, base_digest, ext4_image, qemu_info, run, sha256, vmdisk_argv

FLAVOR = ("--vcpus", "1", "--ram-mb", "64", "--root-gb", "1", "--ephemeral-gb", "1")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBvmdiskCloneKeyMaterialxxxxxxxxxxxxxxxxxxxxx bob@box"


def cli(root: Path, *args: str, ok: bool = True) -> Any:
    out = subprocess.run(vmdisk_argv(root, *args), check=False, capture_output=True, text=True)
    assert (out.returncode == 0) == ok, (out.returncode, out.stdout, out.stderr)
    data = json.loads(out.stdout)
    return {**data["error"], "exit": out.returncode} if not ok else data


def disk(data: dict[str, Any], name: str) -> Path:
    return Path(next(d["path"] for d in data["disks"] if d["name"] == name))


def as_raw(path: Path, fmt: str, tmp: Path) -> str:
    out = tmp / f"{path.parent.name}-{path.name}.raw"
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", path, out)
    digest = sha256(out)
    out.unlink()
    return digest


def iso_file(drive: Path, path: str) -> bytes:
    return subprocess.run(
        ["isoinfo", "-R", "-i", str(drive), "-x", path], capture_output=True, check=True
    ).stdout


@pytest.fixture
def web(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """Instance `web` (qcow2) whose root and ephemeral disks the "guest" has written to."""
    image = ext4_image(tmp_path / "root.raw", {"etc/hostname": b"web\n"}, size=32 * MiB)
    root = tmp_path / "instances"
    (tmp_path / "ud").write_text("#cloud-config\nhostname: web\n")
    (tmp_path / "key.pub").write_text(KEY + "\n")
    cli(root, "image", "fetch", str(image), "--id", "debian")
    made = cli(
        root,
        "create",
        "web",
        "--image",
        "debian",
        *FLAVOR,
        "--config-drive",
        "--user-data",
        str(tmp_path / "ud"),
        "--ssh-key",
        str(tmp_path / "key.pub"),
    )
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x61 40M 1M", disk(made, "disk"))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x62 0 2M", disk(made, "disk.local"))
    return root, made


def test_snapshot_becomes_a_base_that_create_uses(tmp_path: Path, web: tuple[Path, Any]) -> None:
    root, made = web
    want = as_raw(disk(made, "disk"), "qcow2", tmp_path)
    holder = subprocess.Popen(["sleep", "60"], stdin=open(disk(made, "disk"), "rb"))  # noqa: SIM115
    try:
        err = cli(root, "snapshot", "web", "--image-id", "web-v1", ok=False)
        assert err["reason"] == "running" and f"pid {holder.pid}" in err["message"]
    finally:
        holder.kill()
        holder.wait()
    assert [i["image_id"] for i in cli(root, "image", "list")["images"]] == ["debian"]
    snap = cli(root, "snapshot", "web", "--image-id", "web-v1", "--alias", "w1")
    assert snap["sha256"] == base_digest(Path(snap["base"])) and sha256(Path(snap["base"])) == want
    shown = cli(root, "image", "show", "w1")
    assert shown["image_id"] == "web-v1" and shown["source"].startswith("snapshot:web/")
    assert shown["format"] == "raw" and shown["virtual_size"] == 1024 * MiB
    err = cli(root, "snapshot", "web", "--image-id", "web-v1", ok=False)
    assert err["reason"] == "id-conflict"
    again = cli(root, "create", "again", "--image", "w1", *FLAVOR)
    assert qemu_info(disk(again, "disk"), "qcow2")["backing-filename"] == snap["base"]
    assert as_raw(disk(again, "disk"), "qcow2", tmp_path) == want
    assert cli(root, "image", "refresh", "w1", ok=False)["exit"] == 2


def test_clone_copies_disks_with_a_new_identity(tmp_path: Path, web: tuple[Path, Any]) -> None:
    root, made = web
    clone = cli(root, "clone", "web", "web2")
    assert clone["uuid"] != made["uuid"] and clone["name"] == "web2"
    for name in ("disk", "disk.local"):
        run(
            "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", disk(made, name), disk(clone, name)
        )
    backing = qemu_info(disk(clone, "disk"), "qcow2")["backing-filename"]
    assert Path(backing).parent == root / "_base" and backing != made["disks"][0]["path"]
    meta = json.loads(iso_file(disk(clone, "disk.config"), "/openstack/latest/meta_data.json"))
    assert meta["uuid"] == clone["uuid"] and KEY in meta["public_keys"].values()
    user_data = iso_file(disk(clone, "disk.config"), "/openstack/latest/user_data")
    assert user_data == b"#cloud-config\nhostname: web\n"
    # the source instance is untouched, and the clone's base is in use by the clone
    rows = {r["image_id"]: r for r in cli(root, "image", "list")["images"]}
    clone_base = next(r for i, r in rows.items() if i.startswith("clone-of:"))
    assert clone_base["users"] == ["web2"]
    assert cli(root, "clone", "web", "web2", ok=False)["exit"] == 2  # the name is taken
    assert len(cli(root, "image", "list")["images"]) == 2  # and no snapshot was left behind


def test_flat_clone_is_a_raw_copy(tmp_path: Path) -> None:
    image = ext4_image(tmp_path / "root.raw", {"etc/hostname": b"flat\n"}, size=32 * MiB)
    root = tmp_path / "instances"
    made = cli(root, "create", "f1", "--image", str(image), *FLAVOR, "--backend", "flat")
    run("qemu-io", "-f", "raw", "-c", "write -P 0x63 1M 1M", disk(made, "disk"))
    clone = cli(root, "clone", "f1", "f2")
    assert qemu_info(disk(clone, "disk"), "raw")["format"] == "raw"
    assert sha256(disk(clone, "disk")) == sha256(disk(made, "disk"))


def test_export_then_import_on_another_host(tmp_path: Path) -> None:
    image = ext4_image(tmp_path / "root.raw", {"etc/hostname": b"x\n"}, size=32 * MiB)
    a, b = tmp_path / "host-a", tmp_path / "host-b"
    fetched = cli(a, "image", "fetch", str(image), "--id", "img")
    out = tmp_path / "img.qcow2"
    exported = cli(a, "image", "export", "img", str(out), "--format", "qcow2", "--compress")
    assert exported["file"] == str(out) and qemu_info(out, "qcow2")["format"] == "qcow2"
    run("qemu-img", "check", "-f", "qcow2", out)
    assert cli(a, "image", "export", "img", str(out), ok=False)["reason"] == "exists"
    raw_out = cli(a, "image", "export", "img", str(tmp_path / "img.raw"), "--format", "raw")
    assert base_digest(Path(raw_out["file"])) == fetched["sha256"]
    imported = cli(b, "image", "import", str(out), "--id", "img")
    assert imported["sha256"] == fetched["sha256"] and imported["detected_format"] == "qcow2"
    assert not [p for p in tmp_path.iterdir() if ".part-" in p.name]
