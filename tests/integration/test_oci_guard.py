"""The OCI registry client behind the guarded HTTP client: blob redirects, tokens, proxies.

Registries redirect blob downloads to object storage, so a registry (or whoever answers for
it) chooses where a pull connects next. These fake registries are hostile raw-socket servers
on loopback (tests/hostile_http.py) speaking just enough of the distribution protocol. As in
test_http_guard.py, `pretend_public` (a FAKE classifier) makes ::1 play an internet registry
and `FakeDns` (a FAKE resolver) answers names; every connection is real.
"""

from __future__ import annotations

import json
import os
import socket

import pytest

from tests import hostile_http as hostile
from tests.integration.test_http_guard import BOTH, FakeDns, pretend_public
from vmdisk.errors import ImageFetchError, RegistryError
from vmdisk.imagecache.oci import sha256_digest
from vmdisk.imagecache.oci_auth import Credentials
from vmdisk.imagecache.oci_client import BlobReader, RegistryClient

REPO = "vm/disk"
BLOB = os.urandom(256 * 1024)
DIGEST = sha256_digest(BLOB)
BLOB_PATH = f"/v2/{REPO}/blobs/{DIGEST}"
SECRET = "Basic " + "YWxpY2U6czNjcmV0"  # alice:s3cret
TOKEN = "Bearer tok-0123456789"


def client(address: str, dns: FakeDns | None = None, user: bool = False) -> RegistryClient:
    return RegistryClient(
        address,
        insecure=True,
        credentials=Credentials("alice", "s3cret") if user else None,
        connect_timeout=2,
        stall_timeout=2,
        resolve=dns or FakeDns(),
        classify_address=pretend_public,
    )


def pulled(reg: RegistryClient) -> bytes:
    """The blob through BlobReader, which checks its size and digest on the way."""
    return b"".join(BlobReader(reg.blob(REPO, DIGEST), DIGEST, len(BLOB), "the layer"))


def demand(expected: str, then: hostile.Handler, challenge: str) -> hostile.Handler:
    """A registry route: 401 with `challenge` unless the request carries `expected`."""

    def handle(req: hostile.Seen, sock: socket.socket) -> None:
        if req.headers.get("authorization") == expected:
            then(req, sock)
        else:
            hostile.send(sock, 401, {"WWW-Authenticate": challenge, "Content-Length": "0"})

    return handle


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/storage",  # an address
        "http://[::ffff:127.0.0.1]:{port}/storage",  # the same, IPv4-mapped
        "http://storage.test:{port}/storage",  # a name that resolves inward
        "http://rebind.test:{port}/storage",  # public when checked, inward at connect
    ],
)
def test_a_public_registry_cannot_redirect_a_blob_inward(target: str) -> None:
    dns = FakeDns(storage_test=[["127.0.0.1"]], rebind_test=[["::1"], ["127.0.0.1"]])
    with hostile.serve(hosts=BOTH) as srv:
        srv.routes[BLOB_PATH] = hostile.redirect(target.format(port=srv.port), 307)
        srv.routes["/storage"] = hostile.body(BLOB)
        reg = client(f"[::1]:{srv.port}", dns)
        with pytest.raises(ImageFetchError) as err:
            pulled(reg)
        assert srv.hits("/storage") == []  # refused before a byte went inward
        assert len(srv.hits(BLOB_PATH, "::1")) == 1
    assert err.value.reason == "redirect-refused"
    assert "loopback" in err.value.message and "\n" not in err.value.message


def test_a_public_registry_may_redirect_a_blob_to_public_storage() -> None:
    with hostile.serve(hosts=BOTH) as srv, hostile.serve(hosts=("::1",)) as storage:
        srv.routes[BLOB_PATH] = hostile.redirect(storage.url("/signed?X-Sig=abc", "::1"), 307)
        storage.routes["/signed?X-Sig=abc"] = hostile.body(BLOB)
        assert pulled(client(f"[::1]:{srv.port}")) == BLOB


def test_a_public_registry_cannot_send_the_token_request_inward() -> None:
    with hostile.serve(hosts=BOTH) as srv:
        realm = srv.url("/token", "127.0.0.1")
        challenge = f'Bearer realm="{realm}",service="reg"'
        srv.routes[BLOB_PATH] = demand(TOKEN, hostile.body(BLOB), challenge)
        srv.routes["/token?service=reg&scope=repository%3Avm%2Fdisk%3Apull"] = hostile.body(
            json.dumps({"token": TOKEN.split()[1]}).encode()
        )
        with pytest.raises(ImageFetchError) as err:
            pulled(client(f"[::1]:{srv.port}", user=True))
        assert [s.path for s in srv.seen] == [BLOB_PATH]  # the realm was never asked
    assert err.value.reason == "address-refused"
    assert not isinstance(err.value, RegistryError)  # a refusal, not an auth failure


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_authorization_is_not_sent_to_another_origin_on_a_blob_redirect(scheme: str) -> None:
    """The user's own loopback registry (its real class) redirects to storage on another port."""
    with hostile.serve() as srv, hostile.serve() as storage:
        storage.routes["/blob"] = hostile.body(BLOB)
        to_storage = hostile.redirect(storage.url("/blob"), 307)
        if scheme == "basic":
            expected = SECRET
            srv.routes[BLOB_PATH] = demand(expected, to_storage, 'Basic realm="reg"')
        else:
            expected = TOKEN
            token_path = "/token?service=reg&scope=repository%3Avm%2Fdisk%3Apull"
            challenge = f'Bearer realm="{srv.url("/token")}",service="reg"'
            srv.routes[BLOB_PATH] = demand(expected, to_storage, challenge)
            srv.routes[token_path] = demand(
                SECRET, hostile.body(json.dumps({"token": TOKEN.split()[1]}).encode()), ""
            )
        assert pulled(client(f"127.0.0.1:{srv.port}", user=True)) == BLOB
        blob_requests = srv.hits(BLOB_PATH)
        (at_storage,) = storage.hits("/blob")
    assert [r.headers.get("authorization") for r in blob_requests] == [None, expected]
    assert "authorization" not in at_storage.headers
    assert not any("s3cret" in v or "tok-" in v for v in at_storage.headers.values())


def test_environment_proxies_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    with hostile.serve() as srv, hostile.serve() as proxy:
        srv.routes[BLOB_PATH] = hostile.body(BLOB)
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy.url(""))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert pulled(client(f"127.0.0.1:{srv.port}")) == BLOB
        assert proxy.seen == []


def test_an_unreachable_registry_is_one_typed_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    with pytest.raises(RegistryError) as err:
        client(f"127.0.0.1:{port}").blob(REPO, DIGEST)
    assert err.value.reason == "connection-failed"
    assert err.value.message == f"cannot connect to registry 127.0.0.1:{port}: Connection refused"
