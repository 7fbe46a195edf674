"""ss:URL:RELEASE[/ARCH] through the real CLI: a stream signed with a throwaway gpg key, served
on 127.0.0.1; the newest matching item is fetched with its sha256 pinned; unsigned, wrongly
signed and unconfigured streams are refused."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.httpserver import Route, serve
from tests.images import MiB, base_digest, convert, ext4_image, vmdisk_argv

PRODUCTS = "streams/v1/com.example:released:download.sjson"


def gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    env = {**os.environ, "GNUPGHOME": str(home)}
    argv = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "", *args]
    return subprocess.run(argv, input=data, capture_output=True, check=True, env=env).stdout


def make_key(home: Path, name: str) -> Path:
    home.mkdir(mode=0o700)
    gpg(home, "--quick-gen-key", f"{name} <{name}@example.invalid>", "ed25519", "sign", "never")
    keyring = home.parent / f"{name}.gpg"
    keyring.write_bytes(gpg(home, "--export"))
    return keyring


def sign(home: Path, doc: dict[str, Any]) -> bytes:
    return gpg(home, "--clearsign", data=json.dumps(doc, indent=1).encode())


def stream(old: Path, new: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    def item(path: str, image: Path) -> dict[str, Any]:
        data = image.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        return {"ftype": "disk1.img", "path": path, "sha256": digest, "size": len(data)}

    index = {
        "format": "index:1.0",
        "index": {
            "com.example:released:download": {"datatype": "image-downloads", "path": PRODUCTS}
        },
    }
    products = {
        "format": "products:1.0",
        "products": {
            "com.example:server:24.04:amd64": {
                "arch": "amd64",
                "release": "noble",
                "version": "24.04",
                "versions": {
                    "20240101": {"items": {"disk1.img": item("img/old.img", old)}},
                    "20240423": {
                        "items": {
                            "disk1.img": item("img/new.img", new),
                            "root.tar.xz": {
                                "ftype": "root.tar.xz",
                                "path": "x",
                                "sha256": "0" * 64,
                            },
                        }
                    },
                },
            },
            "com.example:server:24.04:arm64": {"arch": "arm64", "release": "noble", "versions": {}},
        },
    }
    return index, products


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ss")
    old = convert(
        ext4_image(tmp / "old.raw", {"v": b"1\n"}, 16 * MiB), "raw", tmp / "o.qcow2", "qcow2"
    )
    new = convert(
        ext4_image(tmp / "new.raw", {"v": b"2\n"}, 16 * MiB), "raw", tmp / "n.qcow2", "qcow2"
    )
    good, bad = tmp / "good", tmp / "bad"
    keyring = make_key(good, "stream")
    make_key(bad, "mallory")
    index, products = stream(old, new)
    return {
        "tmp": tmp,
        "good": good,
        "bad": bad,
        "keyring": keyring,
        "index": index,
        "products": products,
        "old": old,
        "new": new,
    }


def run(root: Path, cfg: Path | None, *args: str, ok: bool = True) -> Any:
    argv = vmdisk_argv(root, *(["--config", str(cfg)] if cfg else []), *args)
    out = subprocess.run(argv, check=False, capture_output=True, text=True)
    assert (out.returncode == 0) == ok, (out.returncode, out.stdout, out.stderr)
    data = json.loads(out.stdout)
    return {**data["error"], "exit": out.returncode} if not ok else data


def routes(s: dict[str, Any], index: bytes, products: bytes) -> dict[str, Route]:
    return {
        "/ss/streams/v1/index.sjson": Route(index),
        f"/ss/{PRODUCTS}": Route(products),
        "/ss/img/old.img": Route(s["old"].read_bytes()),
        "/ss/img/new.img": Route(s["new"].read_bytes()),
    }


def config(tmp: Path, keyring: Path) -> Path:
    cfg = tmp / "ss.toml"
    cfg.write_text(f'[image_cache]\nsimplestreams_keyring = "{keyring}"\n')
    return cfg


def test_signed_stream_newest_item_pinned(tmp_path: Path, signed: dict[str, Any]) -> None:
    s = signed
    r = routes(s, sign(s["good"], s["index"]), sign(s["good"], s["products"]))
    cfg = config(tmp_path, s["keyring"])
    with serve(r) as server:
        source = f"ss:{server.url('/ss')}:noble/amd64"
        got = run(tmp_path / "i", cfg, "image", "fetch", source)
        assert server.hits["/ss/img/new.img"] == 1 and server.hits["/ss/img/old.img"] == 0
        by_version = run(tmp_path / "i", cfg, "image", "fetch", f"ss:{server.url('/ss')}:24.04")
        assert by_version["cached"] is True and by_version["image_id"] == got["image_id"]
    assert got["image_id"].endswith(":com.example:server:24.04:amd64:20240423:disk1.img")
    assert got["detected_format"] == "qcow2"
    row = run(tmp_path / "i", None, "image", "show", got["image_id"])
    assert row["sha256_download"] == base_digest(s["new"])
    with serve(r) as server:
        err = run(
            tmp_path / "i", cfg, "image", "fetch", f"ss:{server.url('/ss')}:noble/arm64", ok=False
        )
    assert err["reason"] == "not-found"


def test_a_lying_item_checksum_is_refused(tmp_path: Path, signed: dict[str, Any]) -> None:
    s = signed
    r = routes(s, sign(s["good"], s["index"]), sign(s["good"], s["products"]))
    r["/ss/img/new.img"] = Route(s["old"].read_bytes())  # the mirror serves other bytes
    with serve(r) as server:
        err = run(
            tmp_path / "i",
            config(tmp_path, s["keyring"]),
            "image",
            "fetch",
            f"ss:{server.url('/ss')}:noble",
            ok=False,
        )
    assert err["reason"] == "checksum-mismatch" and err["exit"] == 4
    assert not list((tmp_path / "i" / "_base").glob("*.info"))


@pytest.mark.parametrize("case", ["unsigned", "wrong-key", "tampered", "no-keyring"])
def test_unverified_streams_are_refused(tmp_path: Path, signed: dict[str, Any], case: str) -> None:
    s = signed
    index, products = sign(s["good"], s["index"]), sign(s["good"], s["products"])
    if case == "unsigned":
        index = json.dumps(s["index"]).encode()
    elif case == "wrong-key":
        products = sign(s["bad"], s["products"])
    elif case == "tampered":
        products = products.replace(b'"20240423"', b'"20990101"')
    cfg = None if case == "no-keyring" else config(tmp_path, s["keyring"])
    with serve(routes(s, index, products)) as server:
        err = run(tmp_path / "i", cfg, "image", "fetch", f"ss:{server.url('/ss')}:noble", ok=False)
        assert server.hits["/ss/img/new.img"] == 0
    want = {"no-keyring": ("no-keyring", 2)}.get(case, ("bad-signature", 4))
    assert (err["reason"], err["exit"]) == want
