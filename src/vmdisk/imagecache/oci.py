"""OCI registries (distribution, Harbor, Zot, Quay): references, auth, and a streaming client.

Why our own client over requests, not a library: we looked at oras-py (PyPI `oras`, 0.2.x) and
at skopeo (Debian) as a transport. oras-py pulls a blob by writing it to a file (its `download_blob`
and `pull` take an output path), and skopeo copies an image into a directory or an OCI layout:
either way the layer lands on disk once, then the disk inside it would be unpacked into `_base`
a second time — the issue forbids that second copy, and a 40 GiB image would need 80 GiB free.
Neither hands us a stream of the blob we can hash, gunzip and untar on the way into the intake.
The distribution protocol we need is small (GET/HEAD a manifest or blob, POST+PUT an upload,
PUT a manifest, and the WWW-Authenticate dance), so it is this module, over requests, with every
byte checked against its digest as it arrives. skopeo stays in the tests as the independent
reader of what we push.

References are `oci://REGISTRY/REPO[:TAG][@sha256:DIGEST]`. TLS is always verified; plain http
is allowed only for registries named in `[oci] insecure_registries` that are loopback addresses.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import platform as platform_module
import queue
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode, urljoin, urlsplit

import requests
import urllib3

from vmdisk._version import __version__
from vmdisk.errors import (
    ChecksumMismatch,
    ImageNotFound,
    InvalidRequest,
    NotSupported,
    RegistryError,
    SettingsError,
)
from vmdisk.imagecache.sources import CHUNK, TransientFetchError, check_redirect

SCHEME = "oci://"
MAX_MANIFEST = 4 * 1024 * 1024

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((*MANIFESTS, *INDEXES))

_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
_REPO = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm/v7", "ppc64le": "ppc64le"}


@dataclass(frozen=True, slots=True)
class Reference:
    """One parsed `oci://` reference; `tag` is "latest" when neither tag nor digest is given."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> Reference:
        if not text.startswith(SCHEME):
            raise InvalidRequest(f"not an oci:// reference: {text!r}", reason="bad-source")
        rest = text[len(SCHEME) :]
        registry, slash, path = rest.partition("/")
        digest = None
        if "@" in path:
            path, _, digest = path.partition("@")
            if not _DIGEST.match(digest):
                raise _bad(text, "the digest must be sha256: and 64 lowercase hex digits")
        tag = None
        name, colon, maybe_tag = path.rpartition(":")
        if colon and "/" not in maybe_tag:
            path, tag = name, maybe_tag
            if not _TAG.match(tag):
                raise _bad(text, f"{tag!r} is not a valid tag")
        if not slash or not _REGISTRY.match(registry) or not path:
            raise _bad(text, "it must be oci://REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]")
        if not _REPO.match(path):
            raise _bad(text, f"{path!r} is not a valid repository (lowercase, / separated)")
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry.lower(), path, tag, digest)

    def __str__(self) -> str:
        tail = (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
        return f"{SCHEME}{self.registry}/{self.repository}{tail}"

    def pinned(self, digest: str) -> str:
        """The reference by digest alone: what two hosts can both fetch byte for byte."""
        return f"{SCHEME}{self.registry}/{self.repository}@{digest}"


def _bad(text: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"bad OCI reference {text!r}: {why}", reason="bad-source")


def host_platform() -> str:
    """The platform a multi-arch index is matched against: linux/<GOARCH>[/<variant>]."""
    machine = platform_module.machine()
    return f"linux/{_ARCH.get(machine, machine)}"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_loopback(registry: str) -> bool:
    host = urlsplit(f"//{registry}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- credentials ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def docker_config_path(env: Mapping[str, str]) -> Path:
    """`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` (where `docker login` writes)."""
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    return Path.home() / ".docker" / "config.json"


def load_credentials(
    configured: Mapping[str, Credentials], auth_file: Path | None
) -> dict[str, Credentials]:
    """Registry -> credentials: the settings' entries win over the docker config file's.

    Only inline `auth` (base64 user:password) entries are read; credential helpers
    (`credsStore`, `credHelpers`) would mean running programs named by a file, which we do not.
    """
    found: dict[str, Credentials] = {}
    if auth_file is not None and auth_file.is_file():
        try:
            data = json.loads(auth_file.read_text())
            auths = data.get("auths") or {}
        except (OSError, ValueError, AttributeError) as exc:
            raise SettingsError(f"{auth_file}: not a readable docker config: {exc}") from exc
        for key, entry in auths.items():
            user, password = _decode_auth(entry)
            if user:
                found[_auth_key(key)] = Credentials(user, password)
    found.update(configured)
    return found


def _decode_auth(entry: Any) -> tuple[str, str]:
    if not isinstance(entry, dict):
        return "", ""
    if entry.get("auth"):
        try:
            text = base64.b64decode(entry["auth"]).decode()
        except (ValueError, UnicodeDecodeError):
            return "", ""
        user, _, password = text.partition(":")
        return user, password
    return str(entry.get("username") or ""), str(entry.get("password") or "")


def _auth_key(key: str) -> str:
    """docker config keys may be URLs (`https://index.docker.io/v1/`): keep host[:port]."""
    host = urlsplit(key).netloc if "//" in key else key.split("/", 1)[0]
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host.lower()


def parse_credentials(entries: tuple[str, ...]) -> dict[str, Credentials]:
    """`[oci] credentials = ["REGISTRY=USER:PASSWORD", ...]`."""
    result: dict[str, Credentials] = {}
    for entry in entries:
        registry, eq, userpass = entry.partition("=")
        user, colon, password = userpass.partition(":")
        if not eq or not colon or not registry or not user:
            raise SettingsError("[oci] credentials entries must be 'REGISTRY=USER:PASSWORD'")
        result[registry.lower()] = Credentials(user, password)
    return result


# ---- the client ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "basic" or "bearer"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """`Bearer realm="https://auth/token",service="registry",scope="repository:x:pull"`."""
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'([A-Za-z_]+)="([^"]*)"', rest))
    if scheme.lower() not in ("basic", "bearer"):
        return None
    return Challenge(scheme.lower(), params)


class RegistryClient:
    """One registry: base URL, credentials, and the tokens it handed out, per scope."""

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool = False,
        connect_timeout: float = 10.0,
        stall_timeout: float = 30.0,
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
        self.timeout = (connect_timeout, stall_timeout)
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["User-Agent"] = f"vmdisk/{__version__}"
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
        """One request authenticated for `scope` (one 401 challenge answered); redirects checked."""
        url = path if "://" in path else self.base + path
        response = self._send(method, url, scope, headers, stream, data)
        if response.status_code == 401:
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            response.close()
            self._authenticate(challenge, scope)
            if data is not None and not isinstance(data, bytes):
                data.seek(0)
            response = self._send(method, url, scope, headers, stream, data)
            if response.status_code == 401:
                response.close()
                raise self._denied(401)
        if response.status_code == 403:
            response.close()
            raise self._denied(403)
        return response

    def _send(
        self,
        method: str,
        url: str,
        scope: str,
        headers: dict[str, str] | None,
        stream: bool,
        data: BinaryIO | bytes | None,
    ) -> requests.Response:
        sent = dict(headers or {})
        if scope in self._auth:
            sent["Authorization"] = self._auth[scope]
        for _ in range(6):
            try:
                response = self.session.request(
                    method, url, headers=sent, stream=stream, data=data,
                    allow_redirects=False, timeout=self.timeout, verify=True,
                )  # fmt: skip
            except requests.exceptions.SSLError as exc:
                raise RegistryError(
                    f"TLS verification failed for {self.registry}: {_first_line(exc)}",
                    reason="tls-failed",
                    hint="plain http is possible only for a loopback registry listed in "
                    "[oci] insecure_registries (or --insecure-registry)",
                ) from exc
            except requests.exceptions.ConnectionError as exc:
                raise RegistryError(
                    f"cannot connect to registry {self.registry}", reason="connection-failed"
                ) from exc
            except requests.exceptions.Timeout as exc:
                raise TransientFetchError(f"timed out talking to {self.registry}") from exc
            if not response.is_redirect or method not in ("GET", "HEAD"):
                return response
            target = urljoin(url, response.headers.get("Location", ""))
            response.close()
            check_redirect(url, target)
            if urlsplit(target).netloc != urlsplit(url).netloc:
                sent.pop("Authorization", None)  # blob storage gets a signed URL, not our token
            url = target
        raise RegistryError(f"too many redirects from {self.registry}", reason="redirect-refused")

    def _authenticate(self, challenge: Challenge | None, scope: str) -> None:
        creds = self.credentials
        if challenge is None:
            raise self._denied(401)
        if challenge.scheme == "basic":
            if creds is None:
                raise self._denied(401)
            self._auth[scope] = _basic(creds)
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
        headers = {"Authorization": _basic(creds)} if creds else {}
        try:
            answer = self.session.get(
                f"{realm}?{urlencode(query)}", headers=headers, timeout=self.timeout
            )
        except requests.RequestException as exc:
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


def _pull(repository: str) -> str:
    return f"repository:{repository}:pull"


def _push(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def _basic(creds: Credentials) -> str:
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    return f"Basic {token}"


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


def check_descriptor(desc: Any, what: str) -> tuple[str, int, str]:
    """(digest, size, media type) of a manifest descriptor, refusing anything malformed."""
    if not isinstance(desc, dict):
        raise RegistryError(f"malformed {what} descriptor in the manifest")
    digest, size, media = desc.get("digest"), desc.get("size"), desc.get("mediaType", "")
    if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
        raise RegistryError(f"malformed {what} descriptor in the manifest")
    if not _DIGEST.match(digest):
        raise NotSupported(f"{what} digest {digest[:80]!r} is not sha256", reason="not-supported")
    return digest, size, str(media)


def client_for(
    registry: str,
    *,
    insecure_registries: tuple[str, ...],
    credentials: Mapping[str, Credentials],
    connect_timeout: float = 10.0,
    stall_timeout: float = 30.0,
) -> RegistryClient:
    insecure = registry in {r.lower() for r in insecure_registries}
    return RegistryClient(
        registry,
        credentials=credentials.get(registry),
        insecure=insecure,
        connect_timeout=connect_timeout,
        stall_timeout=stall_timeout,
    )


def env_auth_file(configured: str) -> Path:
    return Path(configured).expanduser() if configured else docker_config_path(os.environ)
