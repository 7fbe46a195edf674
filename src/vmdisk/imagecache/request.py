"""What a command asks of the image cache: the user's request for one image."""

from __future__ import annotations

from dataclasses import dataclass

from vmdisk.imagecache.records import Checksum
from vmdisk.imagecache.sources import ImageSource


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
    #: Let this source take over a cached entry of the same id fetched from another source
    #: (`vmdisk image fetch --replace`); refused while an instance uses the old base.
    replace: bool = False


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """A request resolved once per command: the opened source and every fact about it.

    The cache, the planner and the provisioner take this and never reopen the source, so a
    Glance image is asked about once and its checksum follows it everywhere (rescue included).
    """

    request: ImageRequest
    source: ImageSource
    image_id: str
    name: str  # cache_name(image_id): the entry in _base
    declared_format: str | None
    checksum: Checksum | None
    max_size: int | None
    size: int | None
    kind: str
    location: str | None
