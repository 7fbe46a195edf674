"""`[image_cache] mirrors`: the local mirror is read first, the original URL when the mirror
lacks the file; the id, cache name and checksum pin are the original's whatever served it."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from tests.httpserver import Route, serve
from tests.images import MiB, convert, ext4_image, sha256, vmdisk_argv


def cli(root: Path, cfg: Path, *args: str, ok: bool = True) -> Any:
    argv = vmdisk_argv(root, "--config", str(cfg), *args)
    out = subprocess.run(argv, check=False, capture_output=True, text=True)
    assert (out.returncode == 0) == ok, (out.returncode, out.stdout, out.stderr)
    data = json.loads(out.stdout)
    return {**data["error"], "exit": out.returncode} if not ok else data


def test_mirror_first_then_origin_same_pins(tmp_path: Path) -> None:
    image = convert(
        ext4_image(tmp_path / "a.raw", {"a": b"a\n"}, 16 * MiB),
        "raw",
        tmp_path / "a.qcow2",
        "qcow2",
    )
    other = convert(
        ext4_image(tmp_path / "b.raw", {"b": b"b\n"}, 16 * MiB),
        "raw",
        tmp_path / "b.qcow2",
        "qcow2",
    )
    mirror = tmp_path / "mirror"
    mirror.mkdir()  # mirrors http://HOST/img/
    (mirror / "a.qcow2").write_bytes(image.read_bytes())
    (mirror / "b.qcow2").write_bytes(image.read_bytes())  # stale: not what the origin has
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    routes = {
        "/img/a.qcow2": Route(image.read_bytes()),
        "/img/b.qcow2": Route(other.read_bytes()),
        "/img/c.qcow2": Route(other.read_bytes()),
    }
    with serve(routes) as server:
        cfg = tmp_path / "m.toml"
        cfg.write_text(f'[image_cache]\nmirrors = ["{server.url("/img/")}=file://{mirror}/"]\n')
        root = tmp_path / "instances"
        a = cli(
            root,
            cfg,
            "image",
            "fetch",
            server.url("/img/a.qcow2"),
            "--checksum",
            f"sha256:{digest}",
        )
        assert server.hits["/img/a.qcow2"] == 0  # served by the mirror
        assert a["image_id"] == server.url("/img/a.qcow2")
        assert cli(root, cfg, "image", "show", a["image_id"])["source"] == a["image_id"]
        c = cli(root, cfg, "image", "fetch", server.url("/img/c.qcow2"))
        assert server.hits["/img/c.qcow2"] == 1  # not on the mirror: the origin
        assert sha256(Path(c["base"])) == sha256(tmp_path / "b.raw")
        other_digest = hashlib.sha256(other.read_bytes()).hexdigest()
        err = cli(
            root,
            cfg,
            "image",
            "fetch",
            server.url("/img/b.qcow2"),
            "--checksum",
            f"sha256:{other_digest}",
            ok=False,
        )
        assert err["reason"] == "checksum-mismatch"  # the stale mirror copy does not pass
    assert sha256(Path(a["base"])) == sha256(tmp_path / "a.raw")


def test_a_bad_mirror_setting_is_exit_3(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('[image_cache]\nmirrors = ["no-equals-sign"]\n')
    err = cli(tmp_path / "i", cfg, "image", "list", ok=False)
    assert err["exit"] == 3 and "mirrors" in err["message"]
