from __future__ import annotations

import pytest

from vmdisk.errors import ImageFetchError, InvalidRequest
from vmdisk.imagecache.netguard import AddressClass, classify, hop_allowed, parse_address
from vmdisk.imagecache.sources import (
    HttpSource,
    LocalFileSource,
    check_redirect,
    open_source,
    redact_url,
)
from vmdisk.imagecache.urls import parse_http_url

#: A FAKE resolver: no name here resolves to a public address, so the test names its answers.
ADDRESSES = {
    "images.example.com": ["203.0.113.7"],
    "evil.example.com": ["127.0.0.1"],
    "localhost": ["127.0.0.1"],
    "meta.example.com": ["169.254.169.254"],
    "lan.example.com": ["10.1.2.3"],
    "mixed.example.com": ["203.0.113.8", "192.168.1.1"],
}


def resolve(host: str) -> list[str]:
    return ADDRESSES.get(host, [host])


@pytest.mark.parametrize(
    "target",
    [
        "file:///etc/passwd",
        "ftp://x/y",
        "data:text/plain,hi",
        "gopher://x",
        "http://127.0.0.1/x",
        "http://evil.example.com/x",
        "http://169.254.169.254/latest",
        "http://meta.example.com/",
        "http://[::1]/x",
        "http://0.0.0.0/x",
        # refused since issue 16
        "http://[::ffff:127.0.0.1]/x",
        "http://[::ffff:169.254.169.254]/latest",
        "http://[::ffff:7f00:1]/x",
        "http://[fd00:ec2::254]/latest",
        "http://100.100.100.200/latest",
        "http://10.0.0.1/x",
        "http://172.31.255.255/x",
        "http://192.168.1.1/x",
        "http://100.64.0.1/x",
        "http://[fc00::1]/x",
        "http://[fd12:3456::1]/x",
        "http://[fe80::1]/x",
        "http://[64:ff9b::7f00:1]/x",
        "http://[64:ff9b::a9fe:a9fe]/x",
        "http://[64:ff9b:1::a00:1]/x",
        "http://[2002:7f00:1::]/x",
        "http://[2002:a9fe:a9fe::]/x",
        "http://[2001:0:7f00:1::]/x",
        "http://2130706433/x",
        "http://0x7f000001/x",
        "http://0177.0.0.1/x",
        "http://127.1/x",
        "http://lan.example.com/x",
        "http://mixed.example.com/x",
        "http://[::1/x",
        "http://host:99999/x",
    ],
)
def test_refused_redirects_from_a_public_host(target: str) -> None:
    with pytest.raises(ImageFetchError) as err:
        check_redirect("http://images.example.com/a.img", target, resolve)
    assert err.value.reason == "redirect-refused"


def test_https_downgrade_refused() -> None:
    with pytest.raises(ImageFetchError):
        check_redirect("https://images.example.com/a", "http://images.example.com/b", resolve)


def test_allowed_redirects() -> None:
    check_redirect("http://images.example.com/a", "https://mirror.example.org/b", resolve)
    check_redirect("http://images.example.com/a", "http://[64:ff9b::808:808]/b", resolve)
    check_redirect("http://images.example.com/a", "http://[2606:4700::1111]/b", resolve)
    check_redirect("http://127.0.0.1:8000/a", "http://127.0.0.1:8000/b", resolve)  # local mirror
    check_redirect("http://127.0.0.1:8000/a", "http://[::1]:8000/b", resolve)  # still loopback
    check_redirect("http://lan.example.com/a", "http://192.168.7.7/b", resolve)  # LAN to LAN


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("http://127.0.0.1/a", "http://169.254.169.254/"),  # loopback -> metadata
        ("http://10.0.0.5/a", "http://[fd00:ec2::254]/"),  # private -> metadata
        ("http://100.64.0.9/a", "http://100.100.100.200/"),  # CGNAT -> metadata in CGNAT
        ("http://10.0.0.5/a", "http://127.0.0.1/"),  # LAN mirror -> this host
        ("http://mixed.example.com/a", "http://192.168.1.1/"),  # partly public counts as public
    ],
)
def test_an_internal_source_cannot_hop_to_another_internal_class(source: str, target: str) -> None:
    with pytest.raises(ImageFetchError) as err:
        check_redirect(source, target, resolve)
    assert err.value.reason == "redirect-refused"


@pytest.mark.parametrize(
    ("address", "cls"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "loopback"),  # noqa: S104 (a value classified, not a bind)
        ("::", "loopback"),
        ("169.254.169.254", "metadata"),
        ("::ffff:169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("169.254.170.2", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("10.0.0.1", "private"),
        ("fc00::1", "private"),
        ("64:ff9b:1::808:808", "private"),  # local-use NAT64: our own translator
        ("100.64.0.1", "shared"),
        ("224.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("8.8.8.8", "public"),
        ("64:ff9b::808:808", "public"),
        ("2002:808:808::1", "public"),
        ("2606:4700::1111", "public"),
        ("::ffff:0:a00:1", "private"),  # SIIT-translated 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private"),  # Teredo client 10.0.0.1
    ],
)
def test_address_classes(address: str, cls: str) -> None:
    assert classify(address) == cls


def test_legacy_ipv4_spellings_are_the_address_they_mean() -> None:
    for text in ("2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.0.0.1", "[::1]"):
        assert parse_address(text) is not None, text
        assert classify(text) is AddressClass.LOOPBACK
    assert parse_address("images.example.com") is None


def test_hop_rule() -> None:
    assert hop_allowed(None, AddressClass.METADATA)  # the user's own URL
    assert hop_allowed(AddressClass.LOOPBACK, AddressClass.LOOPBACK)
    assert hop_allowed(AddressClass.LOOPBACK, AddressClass.PUBLIC)
    assert not hop_allowed(AddressClass.PUBLIC, AddressClass.LOOPBACK)
    assert not hop_allowed(AddressClass.PRIVATE, AddressClass.METADATA)


def test_credentials_are_redacted_and_not_in_the_id() -> None:
    url = "https://user:s3cret@images.example.com:443/img.qcow2#frag"
    assert "s3cret" not in redact_url(url)
    src = HttpSource(url)
    assert "s3cret" not in src.display
    assert src.normalised() == "https://images.example.com/img.qcow2"
    assert HttpSource("http://[::1]:8080/a").normalised() == "http://[::1]:8080/a"


@pytest.mark.parametrize(
    "url",
    [
        "http://u:s3cret@host:99999/x",
        "http://u:s3cret@host:abc/x",
        "http://u:s3cret@[::1/x",
        "http://u:s3cret@[zz::1]/x",
        "http://u:s3cret@/x",
        "http://u:s3cret@:80/x",
        "https://u:s3cret@[1.2.3.4]/x",
        "http://u:s3cret@ho st/x",
    ],
)
def test_malformed_urls_are_bad_url_without_the_password(url: str) -> None:
    assert "s3cret" not in redact_url(url)
    with pytest.raises(ValueError):
        parse_http_url(url)
    with pytest.raises(InvalidRequest) as err:
        open_source(url)
    assert err.value.reason == "bad-url" and err.value.exit_code == 2
    assert "s3cret" not in err.value.message and "****@" in err.value.message


def test_redact_url_never_raises() -> None:
    assert redact_url("http://a:b@[::1") == "http://****@[::1"
    assert redact_url("not a url") == "not a url"
    assert redact_url("http://a:b@c@host/x?y=@z") == "http://****@host/x?y=@z"


def test_source_schemes(tmp_path: object) -> None:
    assert isinstance(open_source("file:///srv/img.raw"), LocalFileSource)
    assert isinstance(open_source("/srv/img.raw"), LocalFileSource)
    assert isinstance(open_source("./my:image.raw"), LocalFileSource)
    assert open_source("/srv/../srv/img.raw").normalised() == "file:///srv/img.raw"
    for bad in ("ftp://host/x", "data:,abc", "gopher://x", "file://otherhost/x", "", "file://[::1"):
        with pytest.raises(InvalidRequest):
            open_source(bad)
