"""Publish a cached base as a KubeVirt containerDisk: `vmdisk image push ID oci://REG/REPO:TAG`.

The layout is what a KubeVirt node unpacks: one tar+gzip layer holding `disk/` and in it
`disk/disk.qcow2` (qcow2, compressed with `qemu-img convert -c`), owned 107:107 (the qemu user
of KubeVirt's launcher), mode 0440. Everything is deterministic — tar mtimes 0, gzip without a
timestamp, manifest keys sorted — so pushing the same base twice gives the same digests, and
blobs the registry already has (HEAD first) are not uploaded again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmdisk.errors import InvalidRequest
from vmdisk.fsutil import temp_name
from vmdisk.imagecache.oci import OCI_CONFIG, OCI_MANIFEST, Reference, sha256_digest
from vmdisk.imagecache.oci_client import RegistryClient
from vmdisk.imagecache.records import BaseRecord
from vmdisk.tools.runner import Runner

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DISK_NAME = "disk/disk.qcow2"
QEMU_UID = 107  # KubeVirt runs qemu as 107:107 and expects to read the disk as that user
ANNOTATION = "io.vmdisk"


@dataclass(frozen=True, slots=True)
class Blob:
    content: Path | bytes  # a file for the layer, the bytes themselves for the config
    digest: str
    size: int
    media: str

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media, "digest": self.digest, "size": self.size}


@dataclass(frozen=True, slots=True)
class PushResult:
    reference: str  # oci://REG/REPO:TAG
    digest: str  # of the manifest: what `--image oci://REG/REPO@DIGEST` pulls
    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]  # already in the registry

    def to_dict(self) -> dict[str, object]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "pinned": self.reference.rsplit(":", 1)[0] + "@" + self.digest,
            "uploaded": list(self.uploaded),
            "skipped": list(self.skipped),
        }


def compress_qcow2(runner: Runner, base: Path, fmt: str, out: Path) -> None:
    """Our own verified base, so no limits beyond the runner's timeout; -f is still given."""
    argv = ["qemu-img", "convert", "-q", "-c", "-f", fmt, "-O", "qcow2", str(base), str(out)]
    runner.run(argv, timeout=24 * 3600)


def _tar_header(name: str, size: int, directory: bool) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o555 if directory else 0o440
    info.uid = info.gid = QEMU_UID
    info.mtime = 0
    return info.tobuf(format=tarfile.PAX_FORMAT)


def build_layer(disk: Path, out: Path) -> tuple[Blob, str]:
    """gzip(tar(disk/, disk/disk.qcow2)) written to `out`; (its blob, the tar's diff_id)."""
    tar_hash, gz_hash = hashlib.sha256(), hashlib.sha256()
    # Level 0: stored deflate blocks in gzip framing (mtime 0). The qcow2 inside is already
    # compressed; deflating it again cost 10 s per 256 MiB here for nothing, and tar+gzip is
    # the layer type every runtime takes.
    deflate = zlib.compressobj(0, zlib.DEFLATED, 31)
    size = disk.stat().st_size
    written = 0

    def emit(data: bytes, fh: io.BufferedWriter) -> None:
        nonlocal written
        tar_hash.update(data)
        packed = deflate.compress(data)
        if packed:
            gz_hash.update(packed)
            fh.write(packed)
            written += len(packed)

    with open(out, "wb") as fh, open(disk, "rb") as src:
        emit(_tar_header("disk/", 0, True), fh)
        emit(_tar_header(DISK_NAME, size, False), fh)
        while chunk := src.read(1024 * 1024):
            emit(chunk, fh)
        emit(bytes((-size) % 512) + bytes(1024), fh)  # padding, then the end-of-archive blocks
        tail = deflate.flush()
        gz_hash.update(tail)
        fh.write(tail)
        written += len(tail)
    digest = "sha256:" + gz_hash.hexdigest()
    return Blob(out, digest, written, LAYER), "sha256:" + tar_hash.hexdigest()


def plain_sha256(path: Path) -> str:
    """sha256 over every byte of the raw base, holes read as zeros: what any reader (a KubeVirt
    node, sha256sum of the unpacked disk converted to raw) can check without vmdisk's tree
    digest (record.sha256, imagecache/digest.py)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def annotations_for(record: BaseRecord, content_sha256: str) -> dict[str, str]:
    """Where the image came from and what the intake found, for whoever pulls it."""
    verdict = {
        "verdict": "accepted",
        "detected_format": record.detected_format,
        "declared_format": record.declared_format,
        "virtual_size": record.virtual_size,
        "sha256_download": record.sha256_download,
        "fetched_at": record.fetched_at,
    }
    return {
        f"{ANNOTATION}.image.id": record.image_id,
        f"{ANNOTATION}.image.source": record.source,
        f"{ANNOTATION}.image.sha256": content_sha256,  # of the raw content a pull gives back
        f"{ANNOTATION}.image.digest": record.sha256,  # vmdisk's tree digest of the same bytes
        f"{ANNOTATION}.image.virtual-size": str(record.virtual_size),
        f"{ANNOTATION}.intake.verdict": json.dumps(verdict, sort_keys=True),
        "org.opencontainers.image.created": record.fetched_at,
    }


def _config(diff_id: str, platform: str) -> Blob:
    os_name, _, arch = platform.partition("/")
    arch, _, variant = arch.partition("/")
    config: dict[str, Any] = {
        "architecture": arch,
        "os": os_name,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "config": {},
    }
    if variant:
        config["variant"] = variant
    data = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return Blob(data, sha256_digest(data), len(data), OCI_CONFIG)


def manifest(config: Blob, layer: Blob, notes: dict[str, str]) -> bytes:
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
        "annotations": notes,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def push_base(
    client: RegistryClient,
    runner: Runner,
    ref: Reference,
    base: Path,
    record: BaseRecord,
    *,
    platform: str,
) -> PushResult:
    """Compress, pack, upload what is missing, then tag the manifest. Temporaries removed."""
    if ref.tag is None or ref.digest is not None:
        raise InvalidRequest(
            f"push needs a tag and no digest: oci://REGISTRY/REPO:TAG, not {ref}",
            reason="bad-source",
        )
    # Temporaries beside the base, named as the cache names them: a killed push leaves only
    # `*.part-*` files, which the pruner removes after an hour like any dead fetch's.
    qcow2, packed = temp_name(base), temp_name(base)
    try:
        compress_qcow2(runner, base, record.format, qcow2)
        layer, diff_id = build_layer(qcow2, packed)
        qcow2.unlink()
        config = _config(diff_id, platform)
        body = manifest(config, layer, annotations_for(record, plain_sha256(base)))
        uploaded, skipped = [], []
        for blob in (layer, config):
            if client.has_blob(ref.repository, blob.digest):
                skipped.append(blob.digest)
                continue
            _upload(client, ref.repository, blob)
            uploaded.append(blob.digest)
        digest = client.put_manifest(ref.repository, ref.tag, body, OCI_MANIFEST)
    finally:
        for path in (qcow2, packed):
            path.unlink(missing_ok=True)
    return PushResult(str(ref), digest, tuple(uploaded), tuple(skipped))


def _upload(client: RegistryClient, repository: str, blob: Blob) -> None:
    if isinstance(blob.content, bytes):
        client.upload_blob(repository, blob.digest, io.BytesIO(blob.content), blob.size)
        return
    with open(blob.content, "rb", buffering=0) as fh:
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        client.upload_blob(repository, blob.digest, fh, blob.size)
