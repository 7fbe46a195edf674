"""OCI references and the facts about images every OCI module shares.

`oci://REGISTRY/REPO[:TAG][@sha256:DIGEST]`; the media types vmdisk reads and writes; the host's
platform; descriptors checked before anything is fetched. The client is oci_client.py, auth
oci_auth.py, the containerDisk source oci_source.py, the pusher oci_push.py.
"""

from __future__ import annotations

import hashlib
import ipaddress
import platform as platform_module
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from vmdisk.errors import InvalidRequest, NotSupported, RegistryError

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
