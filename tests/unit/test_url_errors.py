"""Malformed URLs through the real CLI entry point: one line, exit 2, no password, no write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmdisk.cli.main import main

CASES = [
    ("http://u:s3cret@host:99999/x", "port out of range 0-65535"),
    ("http://u:s3cret@host:abc/x", "port could not be cast to integer value"),
    ("http://u:s3cret@[::1/x", "bad IPv6 literal"),
    ("http://u:s3cret@[zz::1]/x", "bad IPv6 literal"),
    ("http://u:s3cret@[1.2.3.4]/x", "bad IPv6 literal"),
    ("http://u:s3cret@/x", "no host"),
]


@pytest.mark.parametrize(("url", "why"), CASES)
@pytest.mark.parametrize("command", ["fetch", "create"])
def test_malformed_urls_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, why: str, command: str
) -> None:
    where = ["--instances-path", str(tmp_path / "i")]
    args = (
        ["image", "fetch", url]
        if command == "fetch"
        else ["create", "vm1", "--image", url, "--flavor", "m1.tiny"]
    )
    assert main([*where, *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "s3cret" not in err
    first, *rest = err.splitlines()
    assert first.startswith(f"vmdisk: error: not a valid URL ({why}")
    assert first.endswith(url.replace("u:s3cret@", "****@"))
    assert rest == ["hint: use http(s)://HOST[:PORT]/PATH, IPv6 addresses in brackets"]
    assert main(["--json", *where, *args]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"]["type"] == "InvalidRequest" and doc["error"]["reason"] == "bad-url"
    base = tmp_path / "i" / "_base"
    assert not base.exists() or list(base.iterdir()) == []


def test_an_unsupported_scheme_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--instances-path", str(tmp_path), "image", "fetch", "sftp://u:pw@host/x"])
    assert code == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "vmdisk: error: unsupported image source scheme 'sftp'"
    )


def test_a_malformed_glance_api_url_is_a_settings_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMDISK_GLANCE__API_URL", "http://u:s3cret@glance:92x92")
    code = main(["--instances-path", str(tmp_path), "image", "fetch", "glance://abc"])
    err = capsys.readouterr().err
    assert code == 3 and "s3cret" not in err
    assert err.splitlines()[0] == (
        "vmdisk: error: settings: [glance] api_url: not a valid URL "
        "(port could not be cast to integer value): http://****@glance:92x92"
    )
