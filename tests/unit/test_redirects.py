from __future__ import annotations

import pytest

from vmdisk.errors import ImageFetchError, InvalidRequest
from vmdisk.imagecache.sources import (
    HttpSource,
    LocalFileSource,
    check_redirect,
    open_source,
    redact_url,
)

ADDRESSES = {
    "images.example.com": ["203.0.113.7"],
    "evil.example.com": ["127.0.0.1"],
    "localhost": ["127.0.0.1"],
    "meta.example.com": ["169.254.169.254"],
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
    check_redirect("http://127.0.0.1:8000/a", "http://127.0.0.1:8000/b", resolve)  # local mirror


def test_credentials_are_redacted_and_not_in_the_id() -> None:
    url = "https://user:s3cret@images.example.com:443/img.qcow2#frag"
    assert "s3cret" not in redact_url(url)
    src = HttpSource(url)
    assert "s3cret" not in src.display
    assert src.normalised() == "https://images.example.com/img.qcow2"


def test_source_schemes(tmp_path: object) -> None:
    assert isinstance(open_source("file:///srv/img.raw"), LocalFileSource)
    assert isinstance(open_source("/srv/img.raw"), LocalFileSource)
    assert open_source("/srv/../srv/img.raw").normalised() == "file:///srv/img.raw"
    for bad in ("ftp://host/x", "data:,abc", "gopher://x", "file://otherhost/x", ""):
        with pytest.raises(InvalidRequest):
            open_source(bad)
