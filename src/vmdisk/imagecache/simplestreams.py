"""simplestreams (what uvtool and Multipass read for Ubuntu cloud images): `ss:URL:RELEASE[/ARCH]`.

`URL/streams/v1/index.sjson` and the products file it names are inline-signed (clearsigned)
JSON. Each is verified with `gpgv` against the keyring in `[image_cache]
simplestreams_keyring`, and only the text gpgv says was signed is parsed — never the
clearsigned wrapper, so nothing outside the signature can slip in. An unsigned stream, a
signature by another key or no keyring configured is refused. The newest version of the
product whose release (codename or version) and arch match, and an item of a disk `ftype`,
is downloaded from URL/path with its sha256 pinned (the intake checks it while streaming).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from vmdisk.errors import (
    ImageFetchError,
    ImageNotFound,
    InternalError,
    InvalidRequest,
    ToolError,
    UnsafeImage,
)
from vmdisk.imagecache.records import Checksum
from vmdisk.imagecache.sources import HttpSource, ImageSource, Opened, SourceFacts, redact_url
from vmdisk.imagecache.urls import HttpOptions
from vmdisk.tools.runner import Runner

SCHEME = "ss:"
INDEX = "streams/v1/index.sjson"
MAX_DOCUMENT = 64 * 1024 * 1024
#: Disk items in the order we prefer them, and the format each is.
FTYPES = {"disk1.img": "qcow2", "disk-kvm.img": "qcow2", "qcow2": "qcow2"}


def parse(text: str) -> tuple[str, str, str]:
    """`ss:http://host/path:noble/amd64` -> (stream URL ending in /, release, arch)."""
    body = text[len(SCHEME) :]
    url, sep, wanted = body.rpartition(":")
    release, _, arch = wanted.partition("/")
    if not sep or not url.startswith(("http://", "https://")) or not release or "/" in arch:
        raise InvalidRequest(
            f"bad simplestreams source {text!r}",
            hint="ss:<stream URL>:<release>[/<arch>], e.g. ss:https://host/releases:noble/amd64",
            reason="bad-source",
        )
    return url.rstrip("/") + "/", release, arch or "amd64"


class Verifier:
    """gpgv against one keyring; returns the signed text only."""

    def __init__(self, runner: Runner, keyring: str) -> None:
        self.runner = runner
        self.keyring = keyring

    def verified(self, document: bytes, what: str) -> bytes:
        if not self.keyring:
            raise InvalidRequest(
                "simplestreams needs a keyring to verify the stream",
                hint="set [image_cache] simplestreams_keyring to a gpg keyring file",
                reason="no-keyring",
            )
        if not Path(self.keyring).is_file():
            raise InvalidRequest(f"keyring {self.keyring} does not exist", reason="no-keyring")
        argv = ["gpgv", "--keyring", os.path.abspath(self.keyring), "--output", "-", "-"]
        with tempfile.TemporaryDirectory(prefix="vmdisk-gpgv-") as home:
            # An empty home: only the configured keyring is trusted, not ~/.gnupg's.
            return self._run(argv, document, what, home)

    def _run(self, argv: list[str], document: bytes, what: str, home: str) -> bytes:
        env = {"GNUPGHOME": home}
        try:
            result = self.runner.run(argv, input=document, timeout=60, env=env)
        except ToolError as exc:
            raise UnsafeImage(
                f"the signature of {what} does not verify with {self.keyring}",
                hint=exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else None,
                reason="bad-signature",
            ) from exc
        return result.stdout


class SimpleStreamsSource:
    """An ImageSource: resolve() reads and verifies the stream, open() streams the item."""

    def __init__(
        self,
        text: str,
        verifier: Verifier,
        *,
        options: HttpOptions | None = None,
        mirror: Callable[[str, ImageSource], ImageSource] | None = None,
    ) -> None:
        """`mirror` wraps the item's download in `[image_cache] mirrors` (registry.mirrored)."""
        self.text = text
        self.mirror = mirror
        self._item: ImageSource | None = None
        self.url, self.release, self.arch = parse(text)
        self.verifier = verifier
        self.options = options or HttpOptions()
        from vmdisk.imagecache.http import HttpClient  # requests: only ss: users pay for it

        self.client = HttpClient(self.options)  # the documents pass the same address checks
        self._facts: SourceFacts | None = None
        self._item_url: str | None = None

    @property
    def display(self) -> str:
        return redact_url(self.text)

    def normalised(self) -> str:
        return self.resolve().image_id or self.text

    def resolve(self) -> SourceFacts:
        if self._facts is None:
            self._facts = self._pick()
        return self._facts

    def open(self, offset: int = 0) -> Opened:
        self.resolve()
        if self._item_url is None:
            raise InternalError("simplestreams source opened before it was resolved")
        if self._item is None:  # one per source, so a resume goes where the bytes came from
            item: ImageSource = HttpSource(self._item_url, options=self.options)
            self._item = self.mirror(self._item_url, item) if self.mirror else item
        return self._item.open(offset)

    def _document(self, path: str) -> Any:
        url = urljoin(self.url, path)
        if not url.startswith(self.url):
            raise UnsafeImage(f"stream path {path!r} leaves {self.url}", reason="bad-stream")
        response = self.client.get(url, {"Accept-Encoding": "identity"})
        if response.status_code == 404:
            raise ImageNotFound(f"no stream at {redact_url(url)}", reason="not-found")
        if response.status_code != 200 or len(response.content) > MAX_DOCUMENT:
            raise ImageFetchError(f"cannot read {redact_url(url)}: HTTP {response.status_code}")
        signed = self.verifier.verified(response.content, redact_url(url))
        try:
            return json.loads(signed)
        except ValueError as exc:
            raise UnsafeImage(f"{redact_url(url)} is not JSON", reason="bad-stream") from exc

    def _pick(self) -> SourceFacts:
        index = self._document(INDEX).get("index", {})
        paths = [
            entry["path"]
            for entry in index.values()
            if isinstance(entry, dict) and entry.get("datatype") == "image-downloads"
        ]
        for path in paths:
            found = self._pick_in(self._document(path))
            if found is not None:
                return found
        raise ImageNotFound(
            f"no {self.release}/{self.arch} disk image in {self.url}", reason="not-found"
        )

    def _pick_in(self, products: Any) -> SourceFacts | None:
        best: tuple[str, str, str, dict[str, Any]] | None = None
        for name, product in (products.get("products") or {}).items():
            if not isinstance(product, dict) or product.get("arch") != self.arch:
                continue
            if self.release not in (product.get("release"), product.get("version")):
                continue
            for version, body in (product.get("versions") or {}).items():
                found = _disk_item(body.get("items") or {})
                if found is not None and (best is None or version > best[1]):
                    best = (name, version, found[0], found[1])
        if best is None:
            return None
        name, version, ftype, item = best
        self._item_url = urljoin(self.url, item["path"])
        if not self._item_url.startswith(self.url):
            raise UnsafeImage(f"item path {item['path']!r} leaves {self.url}", reason="bad-stream")
        return SourceFacts(
            image_id=f"{SCHEME}{self.url}:{name}:{version}:{ftype}",
            declared_format=FTYPES[ftype],
            checksum=Checksum.parse(f"sha256:{item['sha256']}"),
            size=item.get("size"),
        )


def _disk_item(items: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The preferred disk item of a version: by ftype order, with a path and a sha256."""
    for ftype in FTYPES:
        for item in items.values():
            if item.get("ftype") == ftype and item.get("path") and item.get("sha256"):
                return ftype, item
    return None
