"""`.xz`, `.gz`, `.zst` images through the real CLI: decompressed while streaming (by path and
over a loopback server), the format inside declared and inspected, the checksum of the
compressed file, truncated streams and bombs refused, nothing left behind."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.httpserver import Route, serve
from tests.images import MiB, base_digest, convert, ext4_image, run, sha256, vmdisk_argv

COMPRESS = {"xz": ["xz", "-T1", "-3", "-c"], "gz": ["gzip", "-c"], "zst": ["zstd", "-q", "-c"]}


def cli(root: Path, *args: str, ok: bool = True) -> Any:
    out = subprocess.run(vmdisk_argv(root, *args), check=False, capture_output=True, text=True)
    assert (out.returncode == 0) == ok, (out.returncode, out.stdout, out.stderr)
    data = json.loads(out.stdout)
    if not ok:
        return {**data["error"], "exit": out.returncode}
    return data


def compress(path: Path, ext: str) -> Path:
    target = path.with_name(f"{path.name}.{ext}")
    with open(target, "wb") as fh:
        subprocess.run([*COMPRESS[ext], str(path)], stdout=fh, check=True)
    return target


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("compressed")
    return ext4_image(tmp / "disk.raw", {"etc/os-release": b"ID=test\n"}, size=24 * MiB)


def base_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "_base").iterdir() if p.name != "aliases.json")


@pytest.mark.parametrize("ext", ["xz", "gz", "zst"])
def test_compressed_raw_by_path_and_url(tmp_path: Path, raw: Path, ext: str) -> None:
    packed = compress(raw, ext)
    digest = hashlib.sha256(packed.read_bytes()).hexdigest()
    root = tmp_path / "instances"
    by_path = cli(
        root, "image", "fetch", str(packed), "--format", "raw", "--checksum", f"sha256:{digest}"
    )
    assert by_path["format"] == "raw" and by_path["detected_format"] == "raw"
    assert by_path["virtual_size"] == 24 * MiB
    assert sha256(Path(by_path["base"])) == sha256(raw)
    assert base_digest(raw) == by_path["sha256"]
    route = Route(packed.read_bytes(), cut_after=len(packed.read_bytes()) // 2)
    with serve({f"/disk.raw.{ext}": route}) as server:
        url = server.url(f"/disk.raw.{ext}")
        by_url = cli(root, "image", "fetch", url, "--id", f"u-{ext}")
        assert server.hits[f"/disk.raw.{ext}"] == 2  # cut once, then read again from the start
    assert sha256(Path(by_url["base"])) == sha256(raw)
    assert not [n for n in base_files(root) if ".part-" in n]


def test_qcow2_inside_xz_is_inspected_and_converted(tmp_path: Path, raw: Path) -> None:
    qcow2 = convert(raw, "raw", tmp_path / "disk.qcow2", "qcow2")
    packed = compress(qcow2, "xz")
    root = tmp_path / "instances"
    err = cli(root, "image", "fetch", str(packed), "--format", "raw", ok=False)
    assert err["reason"] == "format-mismatch" and err["exit"] == 4
    got = cli(root, "image", "fetch", str(packed), "--format", "qcow2")
    assert got["detected_format"] == "qcow2" and got["format"] == "raw"
    assert sha256(Path(got["base"])) == sha256(raw)


def test_refusals_leave_nothing(tmp_path: Path, raw: Path) -> None:
    root = tmp_path / "instances"
    packed = compress(raw, "gz")
    err = cli(root, "image", "fetch", str(packed), "--checksum", "sha256:" + "0" * 64, ok=False)
    assert err["reason"] == "checksum-mismatch" and err["exit"] == 4
    cut = tmp_path / "cut.raw.gz"
    cut.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    err = cli(root, "image", "fetch", str(cut), ok=False)
    assert err["reason"] == "corrupt" and "gzip" in err["message"]
    twice = compress(packed, "gz")  # disk.raw.gz.gz: a gzip stream inside
    assert cli(root, "image", "fetch", str(twice), ok=False)["reason"] == "not-an-image"
    bomb_src = tmp_path / "zeros.raw"
    run("truncate", "-s", "1G", bomb_src)
    bomb = compress(bomb_src, "xz")
    assert bomb.stat().st_size < MiB
    err = cli(root, "image", "fetch", str(bomb), "--max-size", "16M", ok=False)
    assert err["reason"] == "too-large" and err["exit"] == 4
    assert base_files(root) == []
