"""What a command asks of the image cache: the user's request for one image."""

from __future__ import annotations

from dataclasses import dataclass

from vmdisk.imagecache.records import Checksum


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """What the user asked for: a source and what they claim about it."""

    source: str
    image_id: str | None = None
    declared_format: str | None = None
    checksum: Checksum | None = None
    max_size: int | None = None
    kind: str = "image"  # or "kernel" / "ramdisk": cached raw, never converted
    location: str | None = None  # rbd://fsid/pool/image/snap when Glance keeps it in Ceph
