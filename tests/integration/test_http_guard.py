"""The network client against hostile servers on 127.0.0.1 and ::1: SSRF, rebinding, Glance
credentials, proxies, resume integrity, header drips and malformed answers.

No public address exists here, so one fake stands in for the internet: `pretend_public`
classifies ::1 as a public address (everything else keeps its real class). A server on ::1
is then "a server on the internet", and 127.0.0.1 is the host it must not reach. Names are
answered by a fake resolver (`FakeDns`), named as such; every connection is real.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests import hostile_http as hostile
from tests import httpserver
from tests.images import MiB, sha256
from vmdisk.cli.main import main
from vmdisk.errors import ImageFetchError, ImageNotFound
from vmdisk.host import Host
from vmdisk.imagecache.http import HttpClient, HttpOptions
from vmdisk.imagecache.netguard import AddressClass, classify
from vmdisk.imagecache.registry import SourceRegistry, http_options
from vmdisk.imagecache.sources import HttpSource
from vmdisk.imagecache.store import ImageRequest
from vmdisk.settings import GlanceSettings, Settings

V0 = os.urandom(2 * MiB) + bytes(MiB)
V1 = os.urandom(2 * MiB) + bytes(MiB)
BOTH = ("::1", "127.0.0.1")


def pretend_public(address: str) -> AddressClass:
    """A FAKE classifier: ::1 plays an internet server; every other address is classed for real."""
    return AddressClass.PUBLIC if address.strip("[]") == "::1" else classify(address)


class FakeDns:
    """A FAKE resolver: each name answers from its list in turn, repeating the last answer."""

    def __init__(self, **answers: list[list[str]]) -> None:
        self.answers = {k.replace("_", "."): v for k, v in answers.items()}
        self.asked: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        queue = self.answers.get(host, [[]])
        return queue.pop(0) if len(queue) > 1 else queue[0]


@pytest.fixture
def settings_fast(settings: Settings) -> Settings:
    fast = dataclasses.replace(
        settings.image_cache,
        download_stall_timeout=2,
        download_connect_timeout=2,
        download_header_timeout=3,
    )
    return dataclasses.replace(settings, image_cache=fast)


def make_host(settings: Settings, dns: FakeDns | None = None, glance: str = "") -> Host:
    host = Host(dataclasses.replace(settings, glance=GlanceSettings(glance, "s3cr3t-token", "p1")))
    host.prepare()
    host.sources = SourceRegistry(
        host.settings.glance,
        options=http_options(host.settings.image_cache),
        resolve=dns or FakeDns(),
        classify_address=pretend_public,
    )
    return host


def base_files(host: Host) -> list[str]:
    return sorted(p.name for p in host.settings.base_dir.iterdir())


def refused(host: Host, url: str) -> ImageFetchError:
    with pytest.raises(ImageFetchError) as err:
        host.fetch_image(ImageRequest(url))
    assert base_files(host) == []
    return err.value


INWARD = [
    "http://127.0.0.1:{port}/img",
    "http://[::ffff:127.0.0.1]:{port}/img",
    "http://[::ffff:7f00:1]:{port}/img",
    "http://2130706433:{port}/img",
    "http://0x7f000001:{port}/img",
    "http://0177.0.0.1:{port}/img",
    "http://127.1:{port}/img",
    "http://[64:ff9b::7f00:1]:{port}/img",
    "http://[2002:7f00:1::]:{port}/img",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/",
    "http://[64:ff9b::a9fe:a9fe]/latest/",
    "http://[fd00:ec2::254]/latest/",
    "http://100.100.100.200/latest/",
    "http://10.0.0.1/x",
    "http://172.16.0.1/x",
    "http://192.168.0.1/x",
    "http://100.64.0.1/x",
    "http://[fc00::1]/x",
    "http://[fe80::1]/x",
    "http://inside.test:{port}/img",
]


@pytest.mark.parametrize("target", INWARD)
def test_a_public_server_cannot_redirect_inward(settings_fast: Settings, target: str) -> None:
    dns = FakeDns(inside_test=[["127.0.0.1"]])
    host = make_host(settings_fast, dns)
    with hostile.serve(hosts=BOTH) as srv:
        srv.routes["/start"] = hostile.redirect(target.format(port=srv.port))
        srv.routes["/img"] = hostile.body(V0)
        err = refused(host, srv.url("/start", "::1"))
        assert srv.hits("/img") == []
    assert err.reason == "redirect-refused"
    assert "address" in err.message


def test_a_public_server_may_redirect_to_another_public_one(settings_fast: Settings) -> None:
    host = make_host(settings_fast, FakeDns(mirror_test=[["::1"]]))
    with hostile.serve(hosts=BOTH) as srv:
        srv.routes["/start"] = hostile.redirect(f"http://mirror.test:{srv.port}/img")
        srv.routes["/img"] = hostile.body(V0)
        cached = host.fetch_image(ImageRequest(srv.url("/start", "::1")))
        assert [s.local for s in srv.hits("/img")] == ["::1"]
    assert sha256(cached.path) == hashlib.sha256(V0).hexdigest()


def test_dns_rebinding_on_a_redirect_is_caught_at_the_connection(settings_fast: Settings) -> None:
    """The name check sees ::1 (public); the connection's own lookup gets 127.0.0.1."""
    dns = FakeDns(rebind_test=[["::1"], ["127.0.0.1"]])
    host = make_host(settings_fast, dns)
    with hostile.serve(hosts=BOTH) as srv:
        srv.routes["/start"] = hostile.redirect(f"http://rebind.test:{srv.port}/img")
        srv.routes["/img"] = hostile.body(V0)
        err = refused(host, srv.url("/start", "::1"))
        assert srv.hits("/img") == []
    assert err.reason == "redirect-refused"
    assert "127.0.0.1 is a loopback address" in err.message
    assert dns.asked.count("rebind.test") == 2  # once by the name check, once to connect


def test_dns_rebinding_on_a_resume_is_refused(settings_fast: Settings) -> None:
    """The user's public name answers ::1, then 127.0.0.1 when the cut download resumes."""
    dns = FakeDns(images_test=[["::1"], ["127.0.0.1"]])
    host = make_host(settings_fast, dns)
    with hostile.serve(hosts=BOTH) as srv:
        srv.routes["/img"] = hostile.Resumable([V0], cut_after=MiB)
        err = refused(host, f"http://images.test:{srv.port}/img")
        assert [s.local for s in srv.hits("/img")] == ["::1"]
    assert err.reason == "address-refused"


def test_a_kept_alive_connection_is_checked_again_for_each_hop(settings_fast: Settings) -> None:
    """local.test is 127.0.0.1 when the user's URL connects; when a public server sends us back
    to it, its name answers ::1 (public: the name check passes), and the pooled connection to
    127.0.0.1 would carry the request unless it is checked again."""
    dns = FakeDns(local_test=[["127.0.0.1"], ["::1"]])
    host = make_host(settings_fast, dns)
    with httpserver.serve() as local, hostile.serve(hosts=("::1",)) as public:
        back = f"http://local.test:{local.port}/img"
        local.routes["/a"] = httpserver.Route(status=302, location=public.url("/b", "::1"))
        local.routes["/img"] = httpserver.Route(V0)
        public.routes["/b"] = hostile.redirect(back)
        err = refused(host, f"http://local.test:{local.port}/a")
        assert local.hits["/a"] == 1 and local.hits["/img"] == 0
    assert err.reason == "redirect-refused"
    assert "127.0.0.1 is a loopback address" in err.message


def test_a_loopback_source_named_by_the_user_is_fetched(settings_fast: Settings) -> None:
    host = make_host(settings_fast)
    with hostile.serve() as srv:
        srv.routes["/a"] = hostile.redirect("/img")
        srv.routes["/img"] = hostile.body(V0)
        cached = host.fetch_image(ImageRequest(srv.url("/a")))
    assert sha256(cached.path) == hashlib.sha256(V0).hexdigest()


# --- Glance ---------------------------------------------------------------------------------


def glance_routes(image_id: str, data: bytes, file_route: hostile.Handler) -> dict[str, object]:
    doc = {
        "id": image_id,
        "status": "active",
        "disk_format": "raw",
        "size": len(data),
        "os_hash_algo": "sha512",
        "os_hash_value": hashlib.sha512(data).hexdigest(),
    }
    return {
        f"/v2/images/{image_id}": hostile.body(json.dumps(doc).encode()),
        f"/v2/images/{image_id}/file": file_route,
    }


IMAGE = "6f1b8d52-3c11-4d4e-9a43-0c2f1e1f4a10"


def test_glance_token_is_not_sent_to_another_origin(settings_fast: Settings) -> None:
    with hostile.serve() as api, hostile.serve() as store:
        store.routes["/blob"] = hostile.body(V0)
        api.routes.update(glance_routes(IMAGE, V0, hostile.redirect(store.url("/blob"))))  # type: ignore[arg-type]
        host = make_host(settings_fast, glance=api.url(""))
        cached = host.fetch_image(ImageRequest(f"glance://{IMAGE}"))
        sent = [s.headers for s in api.seen]
        assert [h.get("x-auth-token") for h in sent] == ["s3cr3t-token"] * 2
        (blob,) = store.hits("/blob")
        assert not {"x-auth-token", "x-project-id", "x-tenant-id"} & set(blob.headers)
    assert sha256(cached.path) == hashlib.sha256(V0).hexdigest()


def test_url_credentials_go_only_to_their_origin(settings_fast: Settings) -> None:
    with hostile.serve() as home, hostile.serve() as other:
        other.routes["/img"] = hostile.body(V0)
        home.routes["/a"] = hostile.redirect("/b")  # same origin: the credentials follow
        home.routes["/b"] = hostile.redirect(other.url("/img"))  # another port: they do not
        host = make_host(settings_fast)
        url = home.url("/a").replace("://", "://user:s3cret@")
        cached = host.fetch_image(ImageRequest(url))
        assert [s.headers.get("authorization", "")[:6] for s in home.seen] == ["Basic "] * 2
        assert "authorization" not in other.hits("/img")[0].headers
    assert cached.image_id == home.url("/a") and "s3cret" not in cached.record.source


def test_glance_metadata_goes_through_the_redirect_checks(settings_fast: Settings) -> None:
    with hostile.serve(hosts=BOTH) as api:
        inward = api.url(f"/v2/images/{IMAGE}")
        api.routes[f"/public/v2/images/{IMAGE}"] = hostile.redirect(inward)
        api.routes.update(glance_routes(IMAGE, V0, hostile.body(V0)))  # type: ignore[arg-type]
        host = make_host(settings_fast, glance=api.url("/public", "::1"))
        err = refused(host, f"glance://{IMAGE}")
        assert api.hits(f"/v2/images/{IMAGE}") == []
    assert err.reason == "redirect-refused"


@pytest.mark.parametrize(
    "answer",
    [
        b"<html>not json</html>",
        b"[1, 2]",
        b'{"status": "active", "disk_format": "raw"}',
        b'{"id": "x", "status": "active", "disk_format": "raw", "size": "12"}',
        b'{"id": "x", "status": "active", "os_hash_algo": "sha256", "os_hash_value": "zz"}',
        b'{"id": "' + b"x" * (2 * MiB) + b'"}',
    ],
)
def test_hostile_glance_metadata_is_a_bad_response(settings_fast: Settings, answer: bytes) -> None:
    with hostile.serve({f"/v2/images/{IMAGE}": hostile.body(answer)}) as api:
        host = make_host(settings_fast, glance=api.url(""))
        err = refused(host, f"glance://{IMAGE}")
    assert err.reason == "bad-response"


def test_environment_proxies_are_not_used_unless_the_settings_say_so(
    settings_fast: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with hostile.serve() as api, hostile.serve() as proxy:
        api.routes.update(glance_routes(IMAGE, V0, hostile.body(V0)))  # type: ignore[arg-type]
        monkeypatch.setenv("HTTP_PROXY", proxy.url(""))
        monkeypatch.setenv("http_proxy", proxy.url(""))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        host = make_host(settings_fast, glance=api.url(""))
        host.fetch_image(ImageRequest(f"glance://{IMAGE}"))
        host.fetch_image(ImageRequest(api.url(f"/v2/images/{IMAGE}/file"), image_id="plain"))
        assert proxy.seen == []
        trusting = dataclasses.replace(host.settings.image_cache, download_trust_env=True)
        host.sources.options = http_options(trusting)
        with pytest.raises(ImageNotFound):  # our "proxy" answers 404 to everything
            host.fetch_image(ImageRequest(api.url("/other"), image_id="other"))
        assert len(proxy.seen) == 1


def test_glance_over_tls_is_verified_and_cafile_trusts_a_private_ca(
    settings_fast: Settings, tmp_path: Path
) -> None:
    context, ca_pem = hostile.self_signed(str(tmp_path))
    with hostile.serve(tls=context) as api:
        api.routes.update(glance_routes(IMAGE, V0, hostile.body(V0)))  # type: ignore[arg-type]
        host = make_host(settings_fast, glance=api.url(""))
        err = refused(host, f"glance://{IMAGE}")
        assert err.reason == "tls-failed" and "certificate verify failed" in err.message
        assert api.seen == []  # nothing was sent: not the token, not the request
        trusted = dataclasses.replace(host.settings.glance, cafile=ca_pem)
        host.sources.glance_settings = trusted
        cached = host.fetch_image(ImageRequest(f"glance://{IMAGE}"))
    assert sha256(cached.path) == hashlib.sha256(V0).hexdigest()


# --- resume integrity -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "changes", "expected", "requests"),
    [
        ("honest", False, V0, 2),  # a real resume: Range + If-Range, 206 from the offset
        ("honest", True, V1, 2),  # If-Range failed: the 200 is the new image, from byte 0
        ("ignores-if-range", True, V1, 3),  # 206 of other content (new ETag): restart
        ("from-zero", False, V0, 3),  # 206 from 0 when asked for the offset: restart
        ("other-total", False, V0, 3),  # 206 of a longer image: restart
        ("no-validator", False, V0, 2),  # nothing to prove sameness with: restart, no Range
    ],
)
def test_a_resume_never_splices_two_images(
    settings_fast: Settings, mode: str, changes: bool, expected: bytes, requests: int
) -> None:
    host = make_host(settings_fast)
    route = hostile.Resumable([V0, V1], mode=mode, changes=changes, cut_after=MiB + 7)
    with hostile.serve({"/img": route}) as srv:
        cached = host.fetch_image(ImageRequest(srv.url("/img")))
        seen = srv.hits("/img")
    assert sha256(cached.path) == hashlib.sha256(expected).hexdigest()
    assert len(seen) == requests
    resume = seen[1].headers
    if mode == "no-validator":
        assert "range" not in resume and "if-range" not in resume
    else:
        assert resume["range"] == f"bytes={MiB + 7}-"
        assert resume["if-range"] == '"v0"'
    assert [p for p in base_files(host) if ".part-" in p] == []


# --- time bombs and malformed answers -------------------------------------------------------


@pytest.mark.timeout(60)
def test_headers_dripped_one_byte_at_a_time_hit_the_header_deadline(
    settings_fast: Settings,
) -> None:
    host = make_host(settings_fast)
    with hostile.serve({"/img": hostile.drip_headers(every=0.3)}) as srv:
        start = time.monotonic()
        err = refused(host, srv.url("/img"))
        took = time.monotonic() - start
    assert err.reason == "header-timeout"
    assert 2.5 < took < 10  # download_header_timeout is 3 s; the 2 s stall never fires


@pytest.mark.timeout(60)
def test_a_dripped_tls_handshake_hits_the_header_deadline(
    settings_fast: Settings, tmp_path: Path
) -> None:
    context, ca_pem = hostile.self_signed(str(tmp_path))
    with hostile.serve(tls=context) as api, hostile.slow_relay(api.port, every=0.05) as port:
        api.routes.update(glance_routes(IMAGE, V0, hostile.body(V0)))  # type: ignore[arg-type]
        host = make_host(settings_fast, glance=f"https://127.0.0.1:{port}")
        host.sources.glance_settings = dataclasses.replace(host.settings.glance, cafile=ca_pem)
        start = time.monotonic()
        err = refused(host, f"glance://{IMAGE}")
        took = time.monotonic() - start
        assert api.seen == []
    # Python bounds a whole TLS handshake by the socket timeout (here the 2 s connect timeout),
    # and the header deadline (3 s) runs from the connect: whichever comes first ends it.
    assert err.reason in ("connection-failed", "header-timeout")
    assert took < 10  # the handshake alone would take over a minute at this rate


@pytest.mark.parametrize(("size", "count"), [(70_000, 1), (10, 150)])
def test_oversized_headers_are_a_bad_response(
    settings_fast: Settings, size: int, count: int
) -> None:
    host = make_host(settings_fast)
    with hostile.serve({"/img": hostile.huge_header(size, count)}) as srv:
        err = refused(host, srv.url("/img"))
    assert err.reason == "bad-response"
    assert "invalid HTTP response" in err.message


def test_abort_unblocks_a_stalled_body_from_another_thread() -> None:
    """The hook intake's watchdog uses: Opened.abort(error) ends a read blocked on the socket."""
    client = HttpClient(HttpOptions(stall_timeout=30))
    route = httpserver.Route(bytes(4 * MiB), stall_after=64 * 1024, ranges=False)
    with httpserver.serve({"/img": route}) as srv:
        opened = HttpSource(srv.url("/img"), client=client).open()
        timer = threading.Timer(0.5, opened.abort, (ImageFetchError("too slow", reason="slow"),))
        timer.start()
        start = time.monotonic()
        with pytest.raises(ImageFetchError) as err:
            for _ in opened.chunks:  # blocks inside one 1 MiB read: 64 KiB came, then nothing
                pass
    assert err.value.reason == "slow"
    assert time.monotonic() - start < 5  # not the 30 s stall timeout


def cli(capsys: pytest.CaptureFixture[str], settings: Settings, *args: str) -> tuple[int, str]:
    code = main(["--instances-path", str(settings.instances_path), *args])
    _, err = capsys.readouterr()
    return code, err


def test_cli_lines_for_a_drip_and_a_huge_header(
    settings_fast: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMDISK_IMAGE_CACHE__DOWNLOAD_HEADER_TIMEOUT", "2")
    with hostile.serve({"/d": hostile.drip_headers(0.3), "/h": hostile.huge_header()}) as srv:
        code, err = cli(capsys, settings_fast, "image", "fetch", srv.url("/d"))
        assert code == 1
        assert err.splitlines() == [
            "vmdisk: error: 127.0.0.1 did not finish its response headers within 2 s",
            "hint: raise [image_cache] download_header_timeout if the server is just slow",
        ]
        code, err = cli(capsys, settings_fast, "image", "fetch", srv.url("/h"))
        assert code == 1
        assert err.startswith("vmdisk: error: 127.0.0.1 sent an invalid HTTP response: a header")
        assert len(err.splitlines()) == 1
