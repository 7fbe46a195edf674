from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmdisk.errors import InvalidRequest
from vmdisk.imagecache.records import Checksum, cache_name
from vmdisk.model import validate_name, validate_uuid
from vmdisk.units import GiB, MiB, format_size, parse_size


def test_nova_cache_name() -> None:
    assert cache_name("fd0cb2f1-8375-44c9-b1f4-3e1f4c4a8ef0") == (
        "0d5e6b61602d758984b3bf038267614d6016eb2a"
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10G", 10 * GiB),
        ("512M", 512 * MiB),
        ("1.5G", 3 * GiB // 2),
        ("20GiB", 20 * GiB),
        ("4096", 4096),
        ("1t", 1024 * GiB),
        ("0", 0),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["-1G", "10X", "", "G", "1e9", "9999999E"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@given(st.integers(min_value=0, max_value=2**50), st.sampled_from(["", "K", "M", "G", "T"]))
def test_parse_size_property(n: int, unit: str) -> None:
    factor = {"": 1, "K": 1024, "M": MiB, "G": GiB, "T": 1024 * GiB}[unit]
    if n * factor < 2**63:
        assert parse_size(f"{n}{unit}") == n * factor


@given(st.integers(min_value=0, max_value=2**62))
def test_format_size_never_fails(n: int) -> None:
    assert format_size(n)


@pytest.mark.parametrize("name", ["web-1", "a", "A.b_c-d", "x" * 63])
def test_good_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "/abs",
        "..",
        ".",
        "",
        "a\x00b",
        "a\nb",
        "a,b",
        "-rf",
        "x" * 64,
        "x" * 300,
        "w\u0435b",  # Cyrillic ie: a look-alike
        "a b",
        "a/b",
    ],
)
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        validate_name(name)
    assert err.value.reason == "bad-name"


@given(st.text(max_size=80))
def test_valid_names_are_plain_path_components(name: str) -> None:
    try:
        validate_name(name)
    except InvalidRequest:
        return
    assert "/" not in name and name not in (".", "..") and not name.startswith("-")
    assert name.isascii() and 1 <= len(name) <= 63


def test_uuid_must_be_canonical() -> None:
    assert validate_uuid("0D5E6B61-602D-7589-84B3-BF038267614D".lower())
    with pytest.raises(InvalidRequest):
        validate_uuid("not-a-uuid")
    with pytest.raises(InvalidRequest):
        validate_uuid("{0d5e6b61-602d-7589-84b3-bf038267614d}")


@pytest.mark.parametrize(
    "text",
    [
        "sha256:abc",
        "crc32:" + "0" * 8,
        "sha256",
        "sha256:" + "g" * 64,
        ":" + "0" * 64,
        "md5:" + "0" * 64,
    ],
)
def test_bad_checksums(text: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        Checksum.parse(text)
    assert err.value.reason == "bad-checksum"


def test_checksum_hex_case_does_not_matter() -> None:
    assert Checksum.parse("SHA256:" + "AB" * 32).hexdigest == "ab" * 32
