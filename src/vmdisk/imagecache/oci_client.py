"""A streaming client for OCI registries (distribution, Harbor, Zot, Quay) over HttpClient.

Why our own client over requests, not a library. We read oras-py (PyPI `oras`, 0.2.x, the
ORAS project's Python SDK) and considered skopeo (Debian) as a transport:
- skopeo copies an image into a directory or an OCI layout. The layer would land on disk, then
  the disk inside it be unpacked into `_base`: the second copy the issue forbids (a 40 GiB image
  would need 80 GiB free), and no stream to hash, gunzip and untar on the way into the intake.
- oras-py's `pull`/`_download_blob` write blobs to files too; its `get_blob(stream=True)` does
  hand back a streaming requests response, but verifies nothing (we would hash it anyway), and
  its request helpers end the process on an unexpected answer (`logger.exit`, a SystemExit)
  where vmdisk must raise one typed error; its small-blob upload reads the file into memory.
  Keeping it would mean wrapping most of it.
The distribution protocol vmdisk needs is small — GET/HEAD a manifest or blob, POST+PUT an
upload, PUT a manifest, and the WWW-Authenticate dance — so it is this module, over requests
(already our HTTP library) through `HttpClient`, the guarded client of every download, with every
byte checked against its digest as it arrives. skopeo stays in the tests as the independent
reader of what we push.

TLS is always verified; plain http is allowed only for registries named in
`[oci] insecure_registries` (or `--insecure-registry`) that are loopback addresses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import queue
import threading
from collections.abc import Iterator, Mapping
from typing import BinaryIO
from urllib.parse import urlencode, urljoin, urlsplit

import requests
import urllib3

from vmdisk._version import __version__
from vmdisk.errors import (
    ChecksumMismatch,
    ImageError,
    ImageFetchError,
    ImageNotFound,
    InvalidRequest,
    RegistryError,
)
from vmdisk.imagecache.http import HttpClient
from vmdisk.imagecache.netguard import Resolver, classify, system_resolver
from vmdisk.imagecache.oci import ACCEPT, MAX_MANIFEST, is_loopback, sha256_digest
from vmdisk.imagecache.oci_auth import Challenge, Credentials, basic_auth, parse_challenge
from vmdisk.imagecache.sources import CHUNK, TransientFetchError
from vmdisk.imagecache.urls import Classifier, HttpOptions


class RegistryClient:
    """One registry: base URL, credentials, and the tokens it handed out, per scope.

    Every request goes through one `HttpClient` (imagecache/http.py), the guarded client all
    downloads use: connections pinned to checked addresses, redirects followed by the client
    with the Authorization header sent only to the registry's own origin, no environment
    proxies unless the options say so. The first answer fixes the registry's address class;
    a blob redirect, token realm or upload location may then go to a public address or to
    one of that class, never from a public registry inward.
    """

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool = False,
        connect_timeout: float = 10.0,
        stall_timeout: float = 30.0,
        ca_file: str | None = None,
        options: HttpOptions | None = None,
        resolve: Resolver = system_resolver,
        classify_address: Classifier = classify,
    ) -> None:
        if insecure and not is_loopback(registry):
            raise InvalidRequest(
                f"plain http is allowed only for loopback registries, not {registry}",
                reason="insecure-registry",
            )
        self.registry = registry
        host = "registry-1.docker.io" if registry == "docker.io" else registry
        self.base = f"{'http' if insecure else 'https'}://{host}"
        self.credentials = credentials
        if options is None:
            options = HttpOptions(connect_timeout=connect_timeout, stall_timeout=stall_timeout)
        # [oci] cafile: a private CA's bundle, else the system's
        options = dataclasses.replace(options, ca_file=ca_file or options.ca_file)
        self.http = HttpClient(options, resolve=resolve, classify_address=classify_address)
        self.http.session.headers["User-Agent"] = f"vmdisk/{__version__}"
        self._auth: dict[str, str] = {}  # scope -> Authorization header value

    # -- plumbing --

    def request(
        self,
        method: str,
        path: str,
        scope: str,
        *,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        data: BinaryIO | bytes | None = None,
    ) -> requests.Response:
        """One request authenticated for `scope` (one 401 challenge answered); redirects checked.

        Unless `stream`, the body is read before the answer is returned.
        """
        url = path if "://" in path else self.base + path
        response = self._send(method, url, scope, headers, data)
        if response.status_code == 401:
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            response.close()
            self._authenticate(challenge, scope)
            if data is not None and not isinstance(data, bytes):
                data.seek(0)
            response = self._send(method, url, scope, headers, data)
            if response.status_code == 401:
                response.close()
                raise self._denied(401)
        if response.status_code == 403:
            response.close()
            raise self._denied(403)
        if not stream and method != "HEAD":
            self._load(response)
        return response

    def _send(
        self,
        method: str,
        url: str,
        scope: str,
        headers: dict[str, str] | None,
        data: BinaryIO | bytes | None,
    ) -> requests.Response:
        auth = {"Authorization": self._auth[scope]} if scope in self._auth else None
        try:
            return self.http.request(method, url, headers or {}, credentials=auth, data=data)
        except ImageFetchError as exc:
            typed = self._typed(exc)
            if typed is exc:
                raise
            raise typed from exc

    def _typed(self, exc: ImageFetchError) -> ImageError:
        """The guarded client's error, named for the registry (TLS and connection faults)."""
        detail = str(exc).rpartition(": ")[2]
        if exc.reason == "tls-failed":
            return RegistryError(
                f"TLS verification failed for {self.registry}: {detail}",
                reason="tls-failed",
                hint="name a private CA's bundle with [oci] cafile; plain http is possible only "
                "for a loopback registry listed in [oci] insecure_registries "
                "(or --insecure-registry)",
            )
        if exc.reason == "connection-failed":
            return RegistryError(
                f"cannot connect to registry {self.registry}: {detail}",
                reason="connection-failed",
            )
        return exc  # refused addresses and redirects, header deadline, bad answers: as they are

    def _load(self, response: requests.Response) -> None:
        """Read a small answer whole, at most MAX_MANIFEST bytes (a registry cannot fill RAM)."""
        try:
            with response:
                response._content = _read_limited(response, MAX_MANIFEST, "answer")
        except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException) as exc:
            raise TransientFetchError(f"an answer of {self.registry} was cut: {exc}") from exc

    def _authenticate(self, challenge: Challenge | None, scope: str) -> None:
        creds = self.credentials
        if challenge is None:
            raise self._denied(401)
        if challenge.scheme == "basic":
            if creds is None:
                raise self._denied(401)
            self._auth[scope] = basic_auth(creds)
            return
        realm = challenge.params.get("realm", "")
        if urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError(f"{self.registry} sent a bad token realm", reason="auth-failed")
        if urlsplit(realm).scheme == "http" and not is_loopback(urlsplit(realm).netloc):
            raise RegistryError(
                f"{self.registry} wants credentials sent over plain http to {realm}",
                reason="auth-failed",
            )
        query = {"service": challenge.params.get("service", ""), "scope": scope}
        basic = {"Authorization": basic_auth(creds)} if creds else None
        try:  # the realm is the registry's choice: the same guard as a redirect of its own
            answer = self.http.get(f"{realm}?{urlencode(query)}", {}, credentials=basic)
            self._load(answer)
        except (ImageFetchError, TransientFetchError) as exc:
            if isinstance(exc, ImageFetchError) and exc.reason in _REFUSED:
                raise  # an inward realm is a refusal, not an authentication failure
            raise RegistryError(
                f"cannot reach the token service of {self.registry}: {_first_line(exc)}",
                reason="auth-failed",
            ) from exc
        if answer.status_code in (401, 403):
            raise self._denied(answer.status_code)
        try:
            body = answer.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if answer.status_code != 200 or not isinstance(token, str) or not token:
            raise RegistryError(
                f"the token service of {self.registry} answered HTTP {answer.status_code} "
                "without a token",
                reason="auth-failed",
            )
        self._auth[scope] = f"Bearer {token}"

    def _denied(self, status: int) -> RegistryError:
        who = f"as {self.credentials.username}" if self.credentials else "anonymously"
        what = "authentication failed" if status == 401 else "access denied"
        return RegistryError(
            f"{what} at registry {self.registry} {who} (HTTP {status})",
            reason="auth-failed",
            hint="check the credentials in [oci] credentials or ~/.docker/config.json",
        )

    # -- the protocol --

    def manifest(self, repository: str, ref: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index, checked against `ref` if a digest."""
        response = self.request(
            "GET", f"/v2/{repository}/manifests/{ref}", _pull(repository),
            headers={"Accept": ACCEPT}, stream=True,
        )  # fmt: skip
        with response:
            if response.status_code == 404:
                raise ImageNotFound(
                    f"registry {self.registry} has no manifest {repository}:{ref}",
                    reason="not-found",
                )
            _expect(response, (200,), f"manifest {repository}:{ref}", self.registry)
            body = _read_limited(response, MAX_MANIFEST, "manifest")
        digest = sha256_digest(body)
        if ref.startswith("sha256:") and digest != ref:
            raise ChecksumMismatch(
                f"manifest {repository}@{ref} from {self.registry} hashes to {digest}",
                reason="digest-mismatch",
            )
        media = response.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            media = str(json.loads(body).get("mediaType") or media)
        except (ValueError, AttributeError) as exc:
            raise RegistryError(f"manifest {repository}:{ref} is not JSON") from exc
        return body, media, digest

    def blob(self, repository: str, digest: str) -> requests.Response:
        """The blob's response, streaming; the caller verifies it (see BlobReader)."""
        response = self.request(
            "GET", f"/v2/{repository}/blobs/{digest}", _pull(repository), stream=True
        )
        if response.status_code == 404:
            response.close()
            raise ImageNotFound(
                f"registry {self.registry} has no blob {digest} in {repository}", reason="not-found"
            )
        _expect(response, (200,), f"blob {digest}", self.registry)
        return response

    def has_blob(self, repository: str, digest: str) -> bool:
        response = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", _push(repository))
        response.close()
        return response.status_code == 200

    def upload_blob(self, repository: str, digest: str, data: BinaryIO, size: int) -> None:
        """POST an upload session, then one monolithic PUT of the bytes with their digest."""
        start = self.request("POST", f"/v2/{repository}/blobs/uploads/", _push(repository))
        start.close()
        _expect(start, (202,), f"upload to {repository}", self.registry)
        location = urljoin(self.base + "/", start.headers.get("Location", ""))
        if urlsplit(location).netloc != urlsplit(self.base).netloc:
            raise RegistryError(f"{self.registry} sent an upload location on another host")
        sep = "&" if "?" in location else "?"
        done = self.request(
            "PUT", f"{location}{sep}{urlencode({'digest': digest})}", _push(repository),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            data=data,
        )  # fmt: skip
        done.close()
        _expect(done, (201,), f"blob {digest}", self.registry)

    def put_manifest(self, repository: str, tag: str, body: bytes, media: str) -> str:
        response = self.request(
            "PUT", f"/v2/{repository}/manifests/{tag}", _push(repository),
            headers={"Content-Type": media}, data=body,
        )  # fmt: skip
        response.close()
        _expect(response, (201,), f"manifest {repository}:{tag}", self.registry)
        ours = sha256_digest(body)
        theirs = response.headers.get("Docker-Content-Digest", ours)
        if theirs != ours:
            raise RegistryError(f"{self.registry} stored the manifest as {theirs}, not {ours}")
        return ours


#: The guarded client's refusals of an address or a redirect target.
_REFUSED = ("address-refused", "redirect-refused")


def _pull(repository: str) -> str:
    return f"repository:{repository}:pull"


def _push(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _expect(response: requests.Response, ok: tuple[int, ...], what: str, registry: str) -> None:
    if response.status_code in ok:
        return
    response.close()
    detail = ""
    try:
        errors = response.json().get("errors") or []
        detail = ": " + "; ".join(str(e.get("message", e.get("code"))) for e in errors)
    except (ValueError, AttributeError, requests.exceptions.RequestException):
        pass
    raise RegistryError(
        f"registry {registry} answered HTTP {response.status_code} for {what}{detail}",
        reason=f"http-{response.status_code}",
    )


def _read_limited(response: requests.Response, limit: int, what: str) -> bytes:
    parts: list[bytes] = []
    total = 0
    for chunk in response.iter_content(65536):
        total += len(chunk)
        if total > limit:
            raise RegistryError(f"the {what} is larger than {limit} bytes", reason="too-large")
        parts.append(chunk)
    return b"".join(parts)


class _BackgroundSha256:
    """sha256 on a thread beside the consumer (hashlib drops the GIL on large updates)."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (chunk := self.queue.get()) is not None:
            self.hash.update(chunk)

    def update(self, chunk: bytes) -> None:
        self.queue.put(chunk)

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def digest(self) -> str:
        self.close()
        return "sha256:" + self.hash.hexdigest()


class BlobReader:
    """A blob's bytes as they arrive, hashed and counted; a digest or size mismatch raises.

    The check runs on the last chunk, before the iterator ends, so whoever consumes the stream
    (the intake) sees an error, never a clean end, when a blob was tampered with.
    """

    def __init__(self, response: requests.Response, digest: str, size: int, what: str) -> None:
        self.response = response
        self.digest = digest
        self.size = size
        self.what = what

    def __iter__(self) -> Iterator[bytes]:
        h = _BackgroundSha256()
        seen = 0
        try:
            for chunk in self.response.raw.stream(CHUNK, decode_content=False):
                seen += len(chunk)
                if seen > self.size:
                    raise ChecksumMismatch(
                        f"{self.what} is longer than the {self.size} bytes its manifest says",
                        reason="digest-mismatch",
                    )
                h.update(chunk)
                yield chunk
        except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
            raise TransientFetchError(f"download of {self.what} was cut: {exc}") from exc
        finally:
            self.response.close()
            h.close()
        actual = h.digest()
        if seen != self.size or actual != self.digest:
            raise ChecksumMismatch(
                f"{self.what} is {seen} bytes hashing to {actual}; its manifest says "
                f"{self.size} bytes, {self.digest}",
                reason="digest-mismatch",
            )


def client_for(
    registry: str,
    *,
    insecure_registries: tuple[str, ...],
    credentials: Mapping[str, Credentials],
    connect_timeout: float = 10.0,
    stall_timeout: float = 30.0,
    ca_file: str | None = None,
    options: HttpOptions | None = None,
    resolve: Resolver = system_resolver,
    classify_address: Classifier = classify,
) -> RegistryClient:
    insecure = registry in {r.lower() for r in insecure_registries}
    return RegistryClient(
        registry,
        credentials=credentials.get(registry),
        insecure=insecure,
        connect_timeout=connect_timeout,
        stall_timeout=stall_timeout,
        ca_file=ca_file,
        options=options,
        resolve=resolve,
        classify_address=classify_address,
    )
