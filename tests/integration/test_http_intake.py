"""http(s) intake against a real server on 127.0.0.1: redirects, cuts, lies, stalls, races."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.httpserver import Route, serve
from tests.images import MiB, sha256
from vmdisk.errors import ChecksumMismatch, ImageFetchError, ImageNotFound, UnsafeImage
from vmdisk.host import Host
from vmdisk.imagecache.records import Checksum
from vmdisk.imagecache.store import ImageRequest
from vmdisk.settings import Settings

BODY = os.urandom(3 * MiB) + bytes(5 * MiB)


@pytest.fixture
def host(settings: Settings) -> Host:
    fast = dataclasses.replace(
        settings.image_cache, download_stall_timeout=1, download_connect_timeout=2
    )
    h = Host(dataclasses.replace(settings, image_cache=fast))
    h.prepare()
    return h


def base_files(host: Host) -> list[str]:
    return sorted(p.name for p in host.settings.base_dir.iterdir())


def test_plain_download_is_sparse_and_verified(host: Host) -> None:
    with serve({"/img.raw": Route(BODY)}) as srv:
        digest = hashlib.sha256(BODY).hexdigest()
        cached = host.fetch_image(
            ImageRequest(srv.url("/img.raw"), checksum=Checksum("sha256", digest))
        )
        assert srv.hits["/img.raw"] == 1
    assert sha256(cached.path) == digest
    assert cached.path.stat().st_blocks * 512 < 4 * MiB  # the 5 MiB of zeros are a hole
    assert cached.image_id == srv.url("/img.raw")


def test_allowed_redirect_chain_of_five(host: Host) -> None:
    routes = {f"/r{i}": Route(status=302, location=f"/r{i + 1}") for i in range(5)}
    routes["/r5"] = Route(BODY)
    with serve(routes) as srv:
        cached = host.fetch_image(ImageRequest(srv.url("/r0")))
    assert sha256(cached.path) == hashlib.sha256(BODY).hexdigest()


@pytest.mark.parametrize(
    ("routes", "start"),
    [
        ({"/a": Route(status=302, location="file:///etc/passwd")}, "/a"),
        ({"/a": Route(status=301, location="ftp://127.0.0.1/x")}, "/a"),
        ({"/a": Route(status=302, location="/b"), "/b": Route(status=302, location="/a")}, "/a"),
        (
            {
                **{f"/r{i}": Route(status=302, location=f"/r{i + 1}") for i in range(6)},
                "/r6": Route(BODY),
            },
            "/r0",
        ),
    ],
)
def test_refused_redirects(host: Host, routes: dict[str, Route], start: str) -> None:
    with serve(routes) as srv, pytest.raises(ImageFetchError) as err:
        host.fetch_image(ImageRequest(srv.url(start)))
    assert err.value.reason == "redirect-refused"
    assert base_files(host) == []


def test_resume_after_a_cut(host: Host) -> None:
    with serve({"/img": Route(BODY, cut_after=MiB + 123)}) as srv:
        cached = host.fetch_image(ImageRequest(srv.url("/img")))
        assert srv.hits["/img"] == 2
    assert sha256(cached.path) == hashlib.sha256(BODY).hexdigest()


def test_truncated_without_range_support_fails_clean(host: Host) -> None:
    with (
        serve({"/img": Route(BODY, cut_after=MiB, ranges=False, cut_times=10)}) as srv,
        pytest.raises(ImageFetchError),
    ):
        host.fetch_image(ImageRequest(srv.url("/img")))
    assert base_files(host) == []


def test_content_length_that_claims_more(host: Host) -> None:
    with (
        serve({"/img": Route(BODY[:MiB], claim_length=2 * MiB, ranges=False)}) as srv,
        pytest.raises(ImageFetchError),
    ):
        host.fetch_image(ImageRequest(srv.url("/img")))
    assert base_files(host) == []


def test_content_length_that_claims_less_is_caught_by_checksum(host: Host) -> None:
    digest = hashlib.sha256(BODY).hexdigest()
    with (
        serve({"/img": Route(BODY, claim_length=MiB, ranges=False)}) as srv,
        pytest.raises(ChecksumMismatch),
    ):
        host.fetch_image(ImageRequest(srv.url("/img"), checksum=Checksum("sha256", digest)))
    assert base_files(host) == []


def test_stall_timeout(host: Host) -> None:
    start = time.monotonic()
    with (
        serve({"/img": Route(BODY, stall_after=4096, ranges=False)}) as srv,
        pytest.raises(ImageFetchError),
    ):
        host.fetch_image(ImageRequest(srv.url("/img")))
    assert time.monotonic() - start < 15
    assert base_files(host) == []


def test_http_errors(host: Host) -> None:
    with serve({"/403": Route(status=403)}) as srv:
        with pytest.raises(ImageNotFound):
            host.fetch_image(ImageRequest(srv.url("/missing")))
        with pytest.raises(ImageFetchError) as err:
            host.fetch_image(ImageRequest(srv.url("/403")))
        assert err.value.reason == "forbidden"


def test_html_error_page_and_gzip_encoding_are_not_images(host: Host) -> None:
    page = b"<html><body>maintenance</body></html>" * 100
    bomb = gzip.compress(bytes(50 * MiB))
    with serve(
        {
            "/page": Route(page, content_type="text/html"),
            "/gz": Route(bomb, content_type="application/gzip"),
        }
    ) as srv:
        for path in ("/page", "/gz"):
            with pytest.raises(UnsafeImage) as err:
                host.fetch_image(ImageRequest(srv.url(path)))
            assert err.value.reason == "not-an-image"
    assert base_files(host) == []


def test_concurrent_processes_download_once(host: Host, tmp_path: Path) -> None:
    with serve({"/img": Route(BODY)}) as srv:
        cmd = [
            sys.executable,
            "-m",
            "vmdisk",
            "--json",
            "--instances-path",
            str(host.settings.instances_path),
            "image",
            "fetch",
            srv.url("/img"),
        ]
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)
        ]
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0] * 6, results
        assert srv.hits["/img"] == 1
    docs = [json.loads(out) for out, _ in results]
    assert sorted(d["cached"] for d in docs) == [False] + [True] * 5
    assert len({d["base"] for d in docs}) == 1
