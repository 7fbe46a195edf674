"""The image plane through the real CLI: list/show/rm/refresh, aliases, content dedup.

Real qcow2 and raw files, a loopback HTTP server whose content changes under a URL, real
`qemu-img` to read back what instances are built on.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.httpserver import Route, serve
from tests.images import MiB, base_digest, convert, ext4_image, qemu_info, sha256, vmdisk_argv

FLAVOR = ("--vcpus", "1", "--ram-mb", "64", "--root-gb", "1")


def cli(root: Path, *args: str, ok: bool = True, cwd: Path | None = None) -> Any:
    """Run vmdisk --json; returns the parsed document (the error document when not ok)."""
    argv = vmdisk_argv(root, *args)
    out = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=cwd)
    assert (out.returncode == 0) == ok, (out.returncode, out.stdout, out.stderr)
    data = json.loads(out.stdout)
    if not ok:
        data["error"]["exit"] = out.returncode
        return data["error"]
    return data


def qcow2_image(tmp: Path, name: str, content: bytes) -> Path:
    raw = ext4_image(tmp / f"{name}.raw", {"etc/hello": content}, size=16 * MiB)
    return convert(raw, "raw", tmp / f"{name}.qcow2", "qcow2")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "instances"


def test_fetch_by_url_with_an_id_then_create_by_that_id(tmp_path: Path, root: Path) -> None:
    """The issue's first complaint: `--image noble` after `fetch URL --id noble`."""
    image = qcow2_image(tmp_path, "noble", b"noble\n")
    with serve({"/noble.qcow2": Route(image.read_bytes())}) as server:
        url = server.url("/noble.qcow2")
        fetched = cli(root, "image", "fetch", url, "--id", "noble", "--format", "qcow2")
        created = cli(root, "create", "web", "--image", "noble", *FLAVOR, cwd=tmp_path)
        assert server.hits["/noble.qcow2"] == 1  # the create used the cache
    assert created["image_id"] == "noble"
    disk = next(d for d in created["disks"] if d["name"] == "disk")
    backing = qemu_info(Path(disk["path"]), "qcow2")["backing-filename"]
    assert backing == fetched["base"]
    listing = cli(root, "image", "list")["images"]
    assert [(i["image_id"], i["source"], i["users"]) for i in listing] == [("noble", url, ["web"])]
    row = listing[0]
    assert row["format"] == "raw" and row["detected_format"] == "qcow2"
    assert row["virtual_size"] == 16 * MiB and row["sha256"] == base_digest(Path(row["base"]))
    assert row["fetched_at"] and row["last_used"] and row["allocated"] > 0


def test_aliases_resolve_first_and_ambiguity_is_refused(tmp_path: Path, root: Path) -> None:
    image = qcow2_image(tmp_path, "jammy", b"jammy\n")
    cli(root, "image", "fetch", str(image), "--id", "ubuntu-22.04")
    assert cli(root, "image", "alias", "set", "jammy", "ubuntu-22.04")["image_id"] == "ubuntu-22.04"
    aliases_file = root / "_base" / "aliases.json"
    assert json.loads(aliases_file.read_text()) == {"jammy": "ubuntu-22.04"}
    assert aliases_file.stat().st_mode & 0o777 == 0o644
    assert cli(root, "image", "alias", "list")["aliases"] == {"jammy": "ubuntu-22.04"}
    shown = cli(root, "image", "show", "jammy")
    assert shown["image_id"] == "ubuntu-22.04" and shown["aliases"] == ["jammy"]
    assert cli(root, "image", "show", shown["name"][:8])["image_id"] == "ubuntu-22.04"
    assert (
        cli(root, "image", "show", shown["sha256"].rpartition(":")[2][:10])["image_id"]
        == "ubuntu-22.04"
    )

    made = cli(root, "create", "a", "--image", "jammy", *FLAVOR, cwd=tmp_path)
    assert made["image_id"] == "ubuntu-22.04"

    # a file of the same name in the working directory: two candidates, both listed
    (tmp_path / "jammy").write_bytes(b"x" * 4096)
    err = cli(root, "create", "b", "--image", "jammy", *FLAVOR, ok=False, cwd=tmp_path)
    assert err["reason"] == "ambiguous-image" and err["exit"] == 2
    assert "ubuntu-22.04" in err["message"] and str(tmp_path / "jammy") in err["message"]

    # an id that disagrees with the alias, or an id already cached from another source
    err = cli(root, "create", "c", "--image", "jammy", "--image-id", "other", *FLAVOR, ok=False)
    assert err["reason"] == "id-conflict"
    other = qcow2_image(tmp_path, "other", b"other\n")
    err = cli(root, "image", "fetch", str(other), "--id", "ubuntu-22.04", ok=False)
    assert err["reason"] == "id-conflict" and str(image) in err["message"]
    err = cli(root, "image", "fetch", str(other), "--id", "jammy", ok=False)
    assert err["reason"] == "id-conflict"
    assert cli(root, "image", "alias", "set", "bad/name", "jammy", ok=False)["reason"] == (
        "bad-alias"
    )
    assert [i["name"] for i in cli(root, "list")] == ["a"]

    assert cli(root, "image", "alias", "rm", "jammy")["image_id"] == "ubuntu-22.04"
    assert json.loads(aliases_file.read_text()) == {}
    assert cli(root, "image", "alias", "rm", "jammy", ok=False)["reason"] == "no-alias"


def test_rm_is_refused_while_in_use(tmp_path: Path, root: Path) -> None:
    image = qcow2_image(tmp_path, "img", b"img\n")
    fetched = cli(root, "image", "fetch", str(image), "--id", "img")
    cli(root, "image", "alias", "set", "i", "img")
    cli(root, "create", "vm", "--image", "i", *FLAVOR)
    err = cli(root, "image", "rm", "i", ok=False)
    assert err["reason"] == "in-use" and err["exit"] == 1 and "vm" in err["message"]
    assert Path(fetched["base"]).is_file()
    cli(root, "delete", "vm")
    removed = cli(root, "image", "rm", "i")
    assert removed == {"removed": "img", "base": fetched["base"], "aliases": ["i"]}
    assert not Path(fetched["base"]).exists()
    assert not Path(fetched["base"] + ".info").exists()
    assert cli(root, "image", "list")["images"] == []
    assert cli(root, "image", "show", "img", ok=False)["reason"] == "not-found"


def test_refresh_keeps_old_instances_on_their_old_base(tmp_path: Path, root: Path) -> None:
    """New content under the same URL: new creates get it, old instances keep the old bytes,
    on a retired entry that the cleaner removes once its last instance is gone."""
    old, new = qcow2_image(tmp_path, "v1", b"one\n"), qcow2_image(tmp_path, "v2", b"two\n")
    route = Route(old.read_bytes())
    with serve({"/img.qcow2": route}) as server:
        url = server.url("/img.qcow2")
        fetched = cli(root, "image", "fetch", url, "--id", "img")
        base = Path(fetched["base"])
        old_sha = base_digest(base)
        unchanged = cli(root, "image", "refresh", "img")
        assert unchanged["changed"] is False and server.hits["/img.qcow2"] == 2
        first = cli(root, "create", "old", "--image", "img", *FLAVOR)
        route.body = new.read_bytes()
        result = cli(root, "image", "refresh", "img", "--json")
    assert result["changed"] is True and result["old_sha256"] == old_sha
    retired = base.with_name(result["retired"])
    assert base_digest(retired) == old_sha and base_digest(base) == result["new_sha256"] != old_sha
    disk = Path(next(d["path"] for d in first["disks"] if d["name"] == "disk"))
    assert result["rebased"] == [str(disk)]
    assert qemu_info(disk, "qcow2")["backing-filename"] == str(retired)
    second = cli(root, "create", "new", "--image", "img", *FLAVOR)
    disk2 = Path(next(d["path"] for d in second["disks"] if d["name"] == "disk"))
    assert qemu_info(disk2, "qcow2")["backing-filename"] == str(base)

    rows = {r["name"]: r for r in cli(root, "image", "list")["images"]}
    assert rows[result["retired"]]["image_id"] is None
    assert rows[result["retired"]]["retired_from"] == "img"
    assert rows[result["retired"]]["users"] == ["old"]

    cfg = tmp_path / "prune.toml"
    cfg.write_text("[image_cache]\nremove_unused_original_minimum_age_seconds = 0\n")
    past = base.stat().st_mtime - 10
    os.utime(retired, (past, past))
    cli(root, "--config", str(cfg), "cache", "prune")
    assert retired.exists()  # still backs "old"
    cli(root, "delete", "old")
    os.utime(retired, (past, past))
    cli(root, "--config", str(cfg), "cache", "prune")
    assert not retired.exists() and base.exists()  # "new" still uses the refreshed base


def test_same_content_is_stored_once(tmp_path: Path, root: Path) -> None:
    """The same bytes by path and by URL: two names, two records, one set of blocks."""
    image = qcow2_image(tmp_path, "same", b"same\n")
    with serve({"/same.qcow2": Route(image.read_bytes())}) as server:
        by_url = cli(root, "image", "fetch", server.url("/same.qcow2"))
    by_path = cli(root, "image", "fetch", str(image))
    a, b = Path(by_url["base"]), Path(by_path["base"])
    assert a != b and sha256(a) == sha256(b)
    listing = {e["name"]: e for e in cli(root, "cache", "list")["entries"]}
    how = listing[b.name]["sharing"]
    assert listing[b.name]["shared_with"] == [a.name] and listing[a.name]["shared_with"] == [b.name]
    if how == "hardlink":
        assert a.stat().st_ino == b.stat().st_ino and a.stat().st_nlink == 2
        every = sum(p.stat().st_blocks * 512 for p in a.parent.iterdir() if p.is_file())
        assert cli(root, "cache", "list")["total_allocated"] == every - a.stat().st_blocks * 512
    else:
        assert how == "reflink"
    # users are counted per name, and removing one name leaves the other whole
    cli(root, "create", "vm", "--image", str(image), *FLAVOR)
    listing = {e["name"]: e for e in cli(root, "cache", "list")["entries"]}
    assert listing[b.name]["users"] == ["vm"] and listing[a.name]["users"] == []
    cli(root, "image", "rm", by_url["image_id"])
    assert not a.exists() and base_digest(b) == by_path["sha256"]
    assert cli(root, "cache", "verify")["ok"] is True


def test_dry_run_reads_the_head_only(tmp_path: Path, root: Path) -> None:
    """`image fetch --dry-run`: size and format from the first MiB, at 1 MiB/s from a 64 MiB
    image, so a download would take a minute; the cached answer touches no source at all."""
    qcow2 = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "1G"], check=True)
    raw = tmp_path / "big.raw"
    raw.write_bytes(b"\x01" * (64 * MiB))
    routes = {
        "/big.qcow2": Route(qcow2.read_bytes()),
        "/big.raw": Route(raw.read_bytes(), rate=MiB),
    }
    with serve(routes) as server:
        q = cli(root, "image", "fetch", server.url("/big.qcow2"), "--dry-run", "--json")
        assert q == {
            "dry_run": True,
            "cached": False,
            "compression": None,
            "download_size": qcow2.stat().st_size,
            "format": "qcow2",
            "image_id": server.url("/big.qcow2"),
            "name": q["name"],
            "source": server.url("/big.qcow2"),
            "virtual_size": 1024 * MiB,
        }
        started = time.monotonic()
        r = cli(root, "image", "fetch", server.url("/big.raw"), "--dry-run")
        assert time.monotonic() - started < 15
        assert r["format"] == "raw" and r["virtual_size"] == r["download_size"] == 64 * MiB
        err = cli(
            root,
            "image",
            "fetch",
            server.url("/big.qcow2"),
            "--dry-run",
            "--max-size",
            "512M",
            ok=False,
        )
        assert err["reason"] == "too-large" and err["exit"] == 4
        assert not (root / "_base").exists() or not [
            p for p in (root / "_base").iterdir() if p.name != "aliases.json"
        ]
        cli(root, "image", "fetch", server.url("/big.qcow2"), "--id", "big")
        hits = server.hits["/big.qcow2"]
        cached = cli(root, "image", "fetch", "big", "--dry-run")
        assert cached["cached"] is True and cached["virtual_size"] == 1024 * MiB
        assert server.hits["/big.qcow2"] == hits


def test_create_dry_run_answers_flavor_too_small_from_the_head(tmp_path: Path, root: Path) -> None:
    """`create --dry-run` reports the image (format, size, cached) next to the plan, and a root
    disk smaller than the image is refused from the first MiB, not after a download (the
    body drips at 256 KiB/s: the whole 8 MiB would take over 30 s)."""
    big = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(big), "8G"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 8M", str(big)],
        check=True,
        capture_output=True,
    )
    with serve({"/big.qcow2": Route(big.read_bytes(), rate=256 * 1024)}) as server:
        url = server.url("/big.qcow2")
        started = time.monotonic()
        err = cli(
            root, "create", "vm1", "--image", url, "--flavor", "m1.tiny", "--dry-run", ok=False
        )
        assert time.monotonic() - started < 20
        assert err["reason"] == "flavor-too-small" and err["exit"] == 1
        assert "8.0 GiB" in err["message"] and "1.0 GiB" in err["message"]
        plan = cli(root, "create", "vm1", "--image", url, "--flavor", "m1.small", "--dry-run")
    assert plan["dry_run"] is True and plan["image"]["virtual_size"] == 8 * 1024 * MiB
    assert plan["image"]["cached"] is False and plan["image"]["format"] == "qcow2"
    assert (
        not (root / "_base").exists()
        or [p.name for p in (root / "_base").iterdir() if p.name != "aliases.json"] == []
    )


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    """A reflink-capable XFS on a loop device (the root file system here is ext4)."""
    img, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "512M", str(img)], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_same_content_on_xfs_is_a_reflink(tmp_path: Path, xfs: Path) -> None:
    """Where the file system can, twins are separate inodes sharing extents."""
    image = qcow2_image(tmp_path, "same", b"same on xfs\n")
    root = xfs / "instances"
    one = cli(root, "image", "fetch", str(image), "--id", "one")
    two = cli(root, "image", "fetch", str(image), "--id", "two")
    a, b = Path(one["base"]), Path(two["base"])
    assert a.stat().st_ino != b.stat().st_ino and a.stat().st_nlink == 1
    extents = subprocess.run(["filefrag", "-v", str(b)], capture_output=True, text=True, check=True)
    assert "shared" in extents.stdout
    listing = {e["name"]: e for e in cli(root, "cache", "list")["entries"]}
    assert listing[b.name]["sharing"] == "reflink" and listing[b.name]["shared_with"] == [a.name]
    assert base_digest(a) == base_digest(b) == two["sha256"]
