"""Pure parsing of the image plane: ss: sources, mirrors, compression suffixes, alias names."""

from __future__ import annotations

import pytest

from vmdisk.errors import InvalidRequest
from vmdisk.imagecache.aliases import valid_alias
from vmdisk.imagecache.compressed import compression_of, output_cap
from vmdisk.imagecache.mirrors import mirror_for, parse_mirrors
from vmdisk.imagecache.simplestreams import parse


def test_simplestreams_sources() -> None:
    assert parse("ss:https://h/releases:noble/arm64") == ("https://h/releases/", "noble", "arm64")
    assert parse("ss:http://127.0.0.1:8080/ss/:24.04") == (
        "http://127.0.0.1:8080/ss/",
        "24.04",
        "amd64",
    )
    for bad in ("ss:noble", "ss:ftp://h/x:noble", "ss:https://h/x:", "ss:https://h/x:a/b/c"):
        with pytest.raises(InvalidRequest):
            parse(bad)


def test_mirrors() -> None:
    pairs = parse_mirrors(["https://a/=file:///m/", "https://a/deep/=http://m2/d/"])
    assert mirror_for("https://a/x.img", pairs) == "file:///m/x.img"
    assert mirror_for("https://a/deep/y.img", pairs) == "http://m2/d/y.img"  # longest prefix
    assert mirror_for("https://b/x.img", pairs) is None
    assert parse_mirrors("https://a/=file:///m/,") == (("https://a/", "file:///m/"),)
    for bad in (["no-equals"], ["file:///x=y"], [1], "https://a/="):
        with pytest.raises(ValueError):
            parse_mirrors(bad)


def test_compression_suffixes_and_cap() -> None:
    assert compression_of("https://h/f41.raw.xz?sig=1") == "xz"
    assert compression_of("/x/disk.qcow2.GZ") == "gzip"
    assert compression_of("d.img.zst#frag") == "zstd"
    assert compression_of("d.qcow2") is None and compression_of("d.tar.bz2") is None
    assert output_cap(8 << 30) == (8 << 30) + (1 << 30) + (64 << 20)


def test_alias_names() -> None:
    assert valid_alias("noble") and valid_alias("ubuntu-24.04") and valid_alias("f41+x")
    for bad in ("", "./noble", "a/b", "http:x", ".hidden", "-x", "a" * 200, "a b"):
        assert not valid_alias(bad)
