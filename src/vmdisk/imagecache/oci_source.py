"""An OCI containerDisk as an image source: `oci://REGISTRY/REPO[:TAG][@sha256:DIGEST]`.

resolve() asks the registry for the manifest (choosing the platform in a multi-arch index) and
names the image by that manifest's digest, so two hosts name the same bytes the same way; a
digest given with a tag pins it (a tag moved elsewhere is refused). open() streams the layers
in order — each hashed against its descriptor as it arrives, gunzipped, read as tar by our own
bounded reader — and yields the bytes of the one regular file under `disk/` (KubeVirt's
containerDisk layout) straight into the intake: no temporary copy of the layer. The rest of the
layers is read too, so a second disk or a tampered blob is an error before the stream ends.
"""

from __future__ import annotations

import json
import posixpath
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vmdisk.errors import (
    ChecksumMismatch,
    ImageNotFound,
    NotSupported,
    RegistryError,
    UnsafeImage,
)
from vmdisk.imagecache.netguard import Resolver, classify, system_resolver
from vmdisk.imagecache.oci import INDEXES, MANIFESTS, Reference, check_descriptor, host_platform
from vmdisk.imagecache.oci_auth import env_auth_file, load_credentials, parse_credentials
from vmdisk.imagecache.oci_client import BlobReader, RegistryClient, client_for
from vmdisk.imagecache.sources import CHUNK, Opened, SourceFacts
from vmdisk.imagecache.urls import Classifier, HttpOptions
from vmdisk.settings import OciSettings

GZIP_LAYERS = (
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)
TAR_LAYERS = ("application/vnd.oci.image.layer.v1.tar",)
MAX_META = 1024 * 1024  # pax and GNU long-name records: names and sizes, never megabytes
MAX_CONFIG = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Selected:
    digest: str  # of the image manifest itself (for an index, of the platform's entry)
    manifest: dict[str, Any]


def refuse_layout(message: str) -> UnsafeImage:
    return UnsafeImage(message, reason="not-a-container-disk")


class OciSource:
    """One containerDisk; the manifest is fetched once per command and reused by open()."""

    def __init__(self, ref: Reference, client: RegistryClient, platform: str = "") -> None:
        self.ref = ref
        self.client = client
        self.platform = platform or host_platform()
        self._selected: Selected | None = None

    @property
    def display(self) -> str:
        return str(self.ref)

    def normalised(self) -> str:
        return self.select().digest

    def resolve(self) -> SourceFacts:
        return SourceFacts(image_id=self.select().digest)

    def select(self) -> Selected:
        """The manifest for this host's platform, its digest verified and pinned if asked."""
        if self._selected is None:
            self._selected = self._select()
        return self._selected

    def _select(self) -> Selected:
        ref, repo = self.ref, self.ref.repository
        body, media, digest = self.client.manifest(repo, ref.tag or ref.digest or "latest")
        if ref.tag and ref.digest and digest != ref.digest:
            raise ChecksumMismatch(
                f"tag {ref.tag} of {ref.registry}/{repo} now names {digest}, "
                f"not the pinned {ref.digest}",
                reason="digest-mismatch",
                hint="the tag was moved; pull by digest, or drop the @sha256: pin to accept it",
            )
        data = _json(body, "manifest")
        if media in INDEXES:
            chosen = self._platform_entry(data)
            body, media, digest = self.client.manifest(repo, chosen)
            data = _json(body, "manifest")
        if media not in MANIFESTS or data.get("schemaVersion") != 2:
            raise NotSupported(
                f"{self.display} is a {media or 'schema 1'} manifest; containerDisks are "
                "OCI or Docker schema 2 images",
                reason="not-supported",
            )
        return Selected(digest, data)

    def _platform_entry(self, index: dict[str, Any]) -> str:
        wanted = self.platform.split("/")
        offered = []
        for entry in index.get("manifests") or []:
            plat = entry.get("platform") or {}
            have = [plat.get("os", ""), plat.get("architecture", "")]
            if plat.get("variant"):
                have.append(plat["variant"])
            offered.append("/".join(have))
            if have[: len(wanted)] == wanted and entry.get("mediaType", "") in MANIFESTS:
                digest, _, _ = check_descriptor(entry, "platform manifest")
                return digest
        raise ImageNotFound(
            f"{self.display} has no image for {self.platform} "
            f"(it has {', '.join(offered) or 'none'})",
            reason="no-platform",
            hint="choose one with --platform or [oci] platform",
        )

    def open(self, offset: int = 0) -> Opened:
        """Read the layers up to the disk's tar header, then stream the disk from `offset`.

        A resume starts the blobs again from their first byte (a gzip stream cannot be entered
        in the middle) and skips what the intake already has.
        """
        selected = self.select()
        self._check_config(selected.manifest)
        layers = [check_descriptor(d, "layer") for d in selected.manifest.get("layers") or []]
        if not layers:
            raise refuse_layout(f"{self.display} has no layers, so no disk")
        walk = _DiskWalk(self, layers)
        disk = walk.find_disk()
        return Opened(walk.stream(disk, offset), disk.size, resumable=False)

    def _check_config(self, manifest: dict[str, Any]) -> None:
        digest, size, _ = check_descriptor(manifest.get("config"), "config")
        if size > MAX_CONFIG:
            raise RegistryError(f"the image config of {self.display} is {size} bytes")
        what = f"config blob {digest}"
        for _ in BlobReader(self.client.blob(self.ref.repository, digest), digest, size, what):
            pass

    def layer_chunks(self, digest: str, size: int, media: str) -> Iterator[bytes]:
        """The layer's tar bytes: verified by digest, gunzipped if it is gzip."""
        if media not in TAR_LAYERS + GZIP_LAYERS:
            raise NotSupported(
                f"{self.display}: layer media type {media!r} is not supported (tar or tar+gzip)",
                reason="not-supported",
            )
        what = f"layer {digest}"
        blob = iter(BlobReader(self.client.blob(self.ref.repository, digest), digest, size, what))
        return _gunzip(blob, what) if media in GZIP_LAYERS else blob


def _json(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise RegistryError(f"the {what} is not JSON") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"the {what} is not a JSON object")
    return data


def _gunzip(chunks: Iterator[bytes], what: str) -> Iterator[bytes]:
    """gzip members one after another (RFC 1952 allows several), as they arrive."""
    inflate = zlib.decompressobj(wbits=31)
    try:
        for chunk in chunks:
            while chunk:
                out = inflate.decompress(chunk, CHUNK)
                if out:
                    yield out
                while inflate.unconsumed_tail:
                    out = inflate.decompress(inflate.unconsumed_tail, CHUNK)
                    if out:
                        yield out
                chunk = inflate.unused_data if inflate.eof else b""
                if inflate.eof:
                    inflate = zlib.decompressobj(wbits=31)
                    if not chunk.strip(b"\0"):
                        chunk = b""  # zero padding after the last member
        tail = inflate.flush()
        if tail:
            yield tail
    except zlib.error as exc:
        for _ in chunks:  # a tampered blob says so by its digest, which the end of it checks
            pass
        raise UnsafeImage(f"{what} is not valid gzip: {exc}", reason="corrupt") from exc


class _Bytes:
    """Exact reads over an iterator of chunks, without joining more than a tar header."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buffer = memoryview(b"")

    def _fill(self) -> bool:
        for chunk in self.chunks:
            if chunk:
                self.buffer = memoryview(chunk)
                return True
        return False

    def read(self, n: int) -> bytes:
        """Exactly n bytes, or fewer at the end of the stream."""
        parts = []
        while n > 0 and (self.buffer or self._fill()):
            part = self.buffer[:n]
            self.buffer = self.buffer[len(part) :]
            parts.append(bytes(part))
            n -= len(part)
        return b"".join(parts)

    def take(self, n: int) -> Iterator[bytes]:
        """The next n bytes as chunks (views on what arrived: no copy)."""
        while n > 0:
            if not self.buffer and not self._fill():
                raise refuse_layout("a layer's tar ends in the middle of a file")
            part = self.buffer[:n]
            self.buffer = self.buffer[len(part) :]
            n -= len(part)
            whole = part.obj
            # the chunk as it arrived when we take all of it, else a copy of the slice
            yield whole if isinstance(whole, bytes) and len(whole) == len(part) else bytes(part)

    def drain(self) -> None:
        for _ in self.chunks:
            pass


@dataclass(frozen=True, slots=True)
class TarEntry:
    name: str
    kind: bytes  # the tar typeflag
    size: int


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes over 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pad(size: int) -> int:
    return (-size) % 512


def _pax(data: bytes) -> dict[str, str]:
    """`<len> key=value\\n` records; only path and size matter here."""
    found: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space] or b"0")
        if length <= 0:
            break
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        found[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return found


def tar_entries(stream: _Bytes) -> Iterator[TarEntry]:
    """Each entry of a tar stream (ustar, pax, GNU long names); the caller consumes its data.

    Extended headers are bounded (MAX_META) so a hostile layer cannot make us buffer gigabytes.
    """
    pending: dict[str, str] = {}
    while True:
        header = stream.read(512)
        if len(header) < 512 or header == bytes(512):
            return
        try:
            size = _octal(header[124:136])
        except ValueError as exc:
            raise refuse_layout("a layer's tar has a corrupt header") from exc
        kind = header[156:157]
        if kind in (b"x", b"g", b"L", b"K"):
            if size > MAX_META:
                raise refuse_layout(f"a layer's tar has a {size}-byte extended header")
            data = stream.read(size + _pad(size))[:size]
            if kind == b"x":
                pending.update(_pax(data))
            elif kind == b"L":
                pending["path"] = data.rstrip(b"\0").decode("utf-8", "replace")
            continue
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar" and prefix and kind != b"S":
            name = f"{prefix}/{name}"
        name = pending.get("path", name)
        if pending.get("size", "").isdigit():
            size = int(pending["size"])
        pending = {}
        yield TarEntry(name, kind, size)


_OTHER_DISKS = ((b"KDMV", "vmdk"), (b"vhdxfile", "vhdx"), (b"conectix", "vpc"))


def _check_disk_format(head: bytes, display: str) -> None:
    """KubeVirt boots qcow2 or raw from a containerDisk; other formats are refused here.

    Everything else (qcow2 details, hostile headers, raw that looks like something) is the
    intake's, which sees these same bytes.
    """
    for magic, name in _OTHER_DISKS:
        if head.startswith(magic):
            raise UnsafeImage(
                f"{display}: the disk is {name}; a containerDisk holds qcow2 or raw",
                reason="format-mismatch",
            )


def _normal(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


class _DiskWalk:
    """Walks the layers once: finds the disk, streams it, then checks everything after it."""

    def __init__(self, source: OciSource, layers: list[tuple[str, int, str]]) -> None:
        self.source = source
        self.layers = iter(layers)
        self.stream_ = _Bytes(iter(()))
        self.entries: Iterator[TarEntry] = iter(())

    def _next_entry(self) -> TarEntry | None:
        while True:
            entry = next(self.entries, None)
            if entry is not None:
                return entry
            self.stream_.drain()  # the tar's end padding: the digest covers it too
            layer = next(self.layers, None)
            if layer is None:
                return None
            self.stream_ = _Bytes(self.source.layer_chunks(*layer))
            self.entries = tar_entries(self.stream_)

    def _disk_entry(self, entry: TarEntry) -> bool:
        name = _normal(entry.name)
        if not name.startswith("disk/") or posixpath.basename(name).startswith(".wh."):
            return False
        if entry.kind in (b"1", b"2"):
            raise refuse_layout(f"{self.source.display}: /{name} is a link, not a disk file")
        if entry.kind == b"S":
            raise NotSupported(f"{self.source.display}: /{name} is a GNU sparse tar member")
        return entry.kind in (b"0", b"\0", b"7")

    def _skip(self, entry: TarEntry) -> None:
        for _ in self.stream_.take(entry.size + _pad(entry.size)):
            pass

    def find_disk(self) -> TarEntry:
        while (entry := self._next_entry()) is not None:
            if self._disk_entry(entry):
                return entry
            self._skip(entry)
        raise refuse_layout(
            f"{self.source.display} is not a containerDisk: no file under /disk/",
        )

    def stream(self, disk: TarEntry, offset: int) -> Iterator[bytes]:
        pos, head = 0, b""
        for chunk in self.stream_.take(disk.size):
            if len(head) < 16:
                head += chunk[:16]
                _check_disk_format(head, self.source.display)
            end = pos + len(chunk)
            if end > offset:
                yield chunk if pos >= offset else chunk[offset - pos :]
            pos = end
        for _ in self.stream_.take(_pad(disk.size)):
            pass
        while (entry := self._next_entry()) is not None:
            if self._disk_entry(entry):
                raise refuse_layout(
                    f"{self.source.display} has two disks: /{_normal(disk.name)} and "
                    f"/{_normal(entry.name)}; a containerDisk holds exactly one"
                )
            self._skip(entry)


def open_oci(
    text: str,
    settings: OciSettings,
    *,
    connect_timeout: float = 10.0,
    stall_timeout: float = 30.0,
    options: HttpOptions | None = None,
    resolve: Resolver = system_resolver,
    classify_address: Classifier = classify,
) -> OciSource:
    """The source for an `oci://` reference, with the registry's client built from settings.

    `options` ([image_cache] download_*, as `http_options` makes them) win over the two
    timeouts; `resolve` and `classify_address` are the guarded client's seams.
    """
    ref = Reference.parse(text)
    client = registry_client(
        ref.registry, settings, connect_timeout, stall_timeout,
        options=options, resolve=resolve, classify_address=classify_address,
    )  # fmt: skip
    return OciSource(ref, client, settings.platform)


def registry_client(
    registry: str,
    settings: OciSettings,
    connect_timeout: float = 10.0,
    stall_timeout: float = 30.0,
    *,
    options: HttpOptions | None = None,
    resolve: Resolver = system_resolver,
    classify_address: Classifier = classify,
) -> RegistryClient:
    creds = load_credentials(
        parse_credentials(settings.credentials), env_auth_file(settings.auth_file)
    )
    return client_for(
        registry,
        insecure_registries=settings.insecure_registries,
        credentials=creds,
        connect_timeout=connect_timeout,
        stall_timeout=stall_timeout,
        ca_file=settings.cafile,
        options=options,
        resolve=resolve,
        classify_address=classify_address,
    )
