"""The OCI pieces that need no registry: references, challenges, credentials, the tar reader."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from vmdisk.errors import InvalidRequest, SettingsError, UnsafeImage
from vmdisk.imagecache.oci import Reference, is_loopback
from vmdisk.imagecache.oci_auth import (
    Credentials,
    load_credentials,
    parse_challenge,
    parse_credentials,
)
from vmdisk.imagecache.oci_client import RegistryClient
from vmdisk.imagecache.oci_push import _tar_header, build_layer
from vmdisk.imagecache.oci_source import _Bytes, _gunzip, tar_entries

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci://r.io/a/b:v1", ("r.io", "a/b", "v1", None)),
        ("oci://r.io/a/b", ("r.io", "a/b", "latest", None)),
        (f"oci://127.0.0.1:5000/disk@{DIGEST}", ("127.0.0.1:5000", "disk", None, DIGEST)),
        (f"oci://R.IO:443/x/y/z:t@{DIGEST}", ("r.io:443", "x/y/z", "t", DIGEST)),
    ],
)
def test_references_parse(text: str, expected: tuple[object, ...]) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected


@pytest.mark.parametrize(
    "text",
    [
        "oci://r.io",
        "oci://r.io/",
        "oci://r.io/UPPER:v1",
        "oci://r.io/a:bad tag",
        "oci://r.io/a@sha256:short",
        "oci://r.io/a@md5:" + "0" * 32,
        "oci://r.io/../etc:v1",
        "oci://user:pw@r.io/a:v1",
    ],
)
def test_bad_references_are_usage_errors(text: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        Reference.parse(text)
    assert err.value.reason == "bad-source"


def test_pinned_reference_drops_the_tag() -> None:
    ref = Reference.parse(f"oci://r.io/a:v1@{DIGEST}")
    assert ref.pinned(DIGEST) == f"oci://r.io/a@{DIGEST}"
    assert str(ref) == f"oci://r.io/a:v1@{DIGEST}"


def test_challenges() -> None:
    bearer = parse_challenge(
        'Bearer realm="https://auth.io/token",service="reg",scope="repository:a:pull"'
    )
    assert bearer is not None and bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.io/token",
        "service": "reg",
        "scope": "repository:a:pull",
    }
    basic = parse_challenge('Basic realm="x"')
    assert basic is not None and basic.scheme == "basic"
    assert parse_challenge("Negotiate abc") is None


def test_plain_http_only_to_loopback() -> None:
    assert is_loopback("127.0.0.1:5000") and is_loopback("localhost:1") and is_loopback("[::1]:5")
    assert not is_loopback("10.0.0.1:5000") and not is_loopback("registry.example.org")
    with pytest.raises(InvalidRequest) as err:
        RegistryClient("10.0.0.1:5000", insecure=True)
    assert err.value.reason == "insecure-registry"
    assert RegistryClient("127.0.0.1:5000", insecure=True).base == "http://127.0.0.1:5000"
    assert RegistryClient("quay.io").base == "https://quay.io"


def test_credentials_from_docker_config_and_settings(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    auths = {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw1").decode()},
        "r.io": {"auth": base64.b64encode(b"u:p:with:colons").decode()},
        "other.io": {"username": "o", "password": "p"},
        "helper.io": {},
    }
    config.write_text(json.dumps({"auths": auths, "credsStore": "secretservice"}))
    found = load_credentials(parse_credentials(("other.io=s:t",)), config)
    assert found["docker.io"] == Credentials("hub", "pw1")
    assert found["r.io"] == Credentials("u", "p:with:colons")
    assert found["other.io"] == Credentials("s", "t")  # settings win over the file
    assert "helper.io" not in found
    assert "p:with" not in repr(found["r.io"])
    assert load_credentials({}, tmp_path / "missing.json") == {}
    config.write_text("{not json")
    with pytest.raises(SettingsError):
        load_credentials({}, config)
    with pytest.raises(SettingsError):
        parse_credentials(("no-equals-sign",))


def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes], fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(data.get(info.name, b"")))
    return out.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_agrees_with_tarfile(fmt: int) -> None:
    long_name = "disk/" + "d" * 150 + ".img"
    payload = {"a/b.txt": b"hello", long_name: os.urandom(3000), "disk/": b""}
    members = []
    for name, body in payload.items():
        info = tarfile.TarInfo(name)
        info.size = len(body)
        if name.endswith("/"):
            info.type = tarfile.DIRTYPE
        members.append(info)
    link = tarfile.TarInfo("disk/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    members.append(link)
    if fmt == tarfile.USTAR_FORMAT:
        members = [m for m in members if len(m.name) <= 100]
    stream = _Bytes(iter([_tar(members, payload, fmt)]))
    seen = []
    for entry in tar_entries(stream):
        body = b"".join(stream.take(entry.size))
        stream.read((-entry.size) % 512)
        seen.append((entry.name.rstrip("/"), entry.kind, body))
    assert seen == [(m.name.rstrip("/"), m.type, payload.get(m.name, b"")) for m in members]


def test_huge_extended_header_is_refused() -> None:
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = 64 * 1024 * 1024
    with pytest.raises(UnsafeImage) as err:
        list(tar_entries(_Bytes(iter([header.tobuf(tarfile.USTAR_FORMAT)]))))
    assert err.value.reason == "not-a-container-disk"


def test_truncated_member_is_refused() -> None:
    info = tarfile.TarInfo("disk/x")
    info.size = 10000
    stream = _Bytes(iter([info.tobuf(tarfile.USTAR_FORMAT), b"x" * 100]))
    entry = next(tar_entries(stream))
    with pytest.raises(UnsafeImage):
        b"".join(stream.take(entry.size))


def test_gunzip_handles_several_members_and_refuses_garbage() -> None:
    data = os.urandom(3 * 1024 * 1024)
    packed = gzip.compress(data[:1000]) + gzip.compress(data[1000:])
    pieces = [packed[i : i + 7777] for i in range(0, len(packed), 7777)]
    assert b"".join(_gunzip(iter(pieces), "layer")) == data
    with pytest.raises(UnsafeImage) as err:
        list(_gunzip(iter([b"not gzip at all"]), "layer"))
    assert err.value.reason == "corrupt"


def test_pushed_layer_is_deterministic_and_readable(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(os.urandom(5000))
    one, diff_one = build_layer(disk, tmp_path / "one.tar.gz")
    two, diff_two = build_layer(disk, tmp_path / "two.tar.gz")
    assert (one.digest, diff_one) == (two.digest, diff_two)
    with tarfile.open(tmp_path / "one.tar.gz", "r:gz") as tar:
        members = tar.getmembers()
        assert [(m.name, m.uid, m.gid, m.mode) for m in members] == [
            ("disk", 107, 107, 0o555),
            ("disk/disk.qcow2", 107, 107, 0o440),
        ]
        extracted = tar.extractfile(members[1])
        assert extracted is not None and extracted.read() == disk.read_bytes()
    assert len(_tar_header("disk/", 0, True)) == 512


def test_oci_settings_from_toml_and_environment(tmp_path: Path) -> None:
    from vmdisk.settings import load_settings

    config = tmp_path / "vmdisk.toml"
    config.write_text(
        '[oci]\ninsecure_registries = ["127.0.0.1:5000"]\nplatform = "linux/arm64"\n'
        'credentials = ["r.io=u:p"]\n'
    )
    env = {"VMDISK_OCI__AUTH_FILE": "/etc/vmdisk/docker.json"}
    settings = load_settings(config, env, {"instances_path": str(tmp_path)})
    assert settings.oci.insecure_registries == ("127.0.0.1:5000",)
    assert settings.oci.platform == "linux/arm64"
    assert parse_credentials(settings.oci.credentials) == {"r.io": Credentials("u", "p")}
    assert settings.oci.auth_file == "/etc/vmdisk/docker.json"
    config.write_text("[oci]\ninsecure_registry = []\n")
    with pytest.raises(SettingsError, match="insecure_registries"):
        load_settings(config, {}, {"instances_path": str(tmp_path)})


def test_registry_client_speaks_through_the_guarded_http_client() -> None:
    from vmdisk.imagecache.http import HttpClient
    from vmdisk.imagecache.urls import HttpOptions

    reg = RegistryClient("quay.io", ca_file="/etc/vmdisk/ca.pem", stall_timeout=7)
    assert isinstance(reg.http, HttpClient)
    assert reg.http.session.trust_env is False  # no proxies or .netrc from the environment
    assert reg.http.session.verify == "/etc/vmdisk/ca.pem"  # [oci] cafile
    assert reg.http.options.stall_timeout == 7
    assert RegistryClient("quay.io").http.session.verify is True  # the system's CAs
    trusting = RegistryClient("quay.io", options=HttpOptions(trust_env=True, header_timeout=5))
    assert trusting.http.session.trust_env is True  # only when [image_cache] says so
    assert trusting.http.guard.header_timeout == 5
