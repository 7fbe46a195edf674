"""The pure checks behind the input hardening: credentials masked, text, hostnames, addresses."""

from __future__ import annotations

import pytest

from vmdisk.credentials import has_credentials, strip_credentials, token_free_id
from vmdisk.errors import InvalidRequest
from vmdisk.userdata import check_user_data
from vmdisk.validate import bad_character, check_hostname, check_mac, check_text


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("https://u:p@h.example/i.qcow2", "https://****@h.example/i.qcow2"),
        ("https://tok@h.example:8443/i", "https://****@h.example:8443/i"),
        (
            "https://h/i?X-Amz-Signature=abc&X-Amz-Date=1",
            "https://h/i?X-Amz-Signature=***&X-Amz-Date=1",
        ),
        ("https://h/i?access_token=abc", "https://h/i?access_token=***"),
        ("https://h/i?id=5", "https://h/i?id=5"),
        ("/var/lib/images/a.raw", "/var/lib/images/a.raw"),
        ("glance://6f1b", "glance://6f1b"),
    ],
)
def test_strip_credentials(given: str, kept: str) -> None:
    assert strip_credentials(given) == kept
    assert has_credentials(given) == (given != kept)


def test_token_free_id() -> None:
    assert token_free_id("https://h/i?id=5") is None
    assert token_free_id("HTTPS://u:p@H/i?token=a&v=1") == "https://h/i?token=***&v=1"


@pytest.mark.parametrize("text", ["a\x00", "a\x1f", "a\x7f", "a\x9b", "a\ud800", "a\ufffe"])
def test_bad_characters(text: str) -> None:
    assert bad_character(text) is not None
    with pytest.raises(InvalidRequest):
        check_text(text, "x")


def test_good_text_and_hostnames() -> None:
    assert bad_character("ü 日本 <&>") is None
    assert check_hostname("web-1.example.org") == "web-1.example.org"
    for bad in ("-web", "web-", "a..b", "x" * 64, "we_b", "a b"):
        with pytest.raises(InvalidRequest):
            check_hostname(bad)
    assert check_mac("52:54:00:AB:CD:EF") == "52:54:00:ab:cd:ef"


def test_user_data_without_cloud_config_header_is_not_parsed() -> None:
    assert check_user_data(b"#!/bin/sh\n{[") == b"#!/bin/sh\n{["
    assert check_user_data(b"#cloud-config\n") == b"#cloud-config\n"
