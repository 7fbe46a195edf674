"""`--dry-run` for images: what an image is and whether it is cached, without downloading it.

A cached image is answered from its record without touching the source. Otherwise the source
is opened and only its first MiB is read (then the connection is closed): that gives the
download size (Content-Length, stat, Glance's metadata) and, through the same inspector the
intake uses, the format and virtual size (from the header for qcow2/vmdk/vhdx, the size itself
for raw). What cannot be known from the head is reported as unknown, never guessed.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any

from vmdisk.imagecache.compressed import CompressedSource
from vmdisk.imagecache.inspect import HEAD_BYTES, StreamInspector
from vmdisk.imagecache.request import ResolvedImage
from vmdisk.imagecache.store import ImageCache


@dataclass(frozen=True, slots=True)
class Probe:
    image_id: str
    name: str
    source: str
    cached: bool
    format: str | None  # detected (or, when cached, what the base is now)
    virtual_size: int | None
    download_size: int | None
    compression: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": True, **asdict(self)}


def probe_image(image: ResolvedImage, cache: ImageCache, max_virtual_size: int | None) -> Probe:
    """Answer from the cache, else from the source's head; refusals raise as the intake's."""
    source = image.source
    codec = source.codec if isinstance(source, CompressedSource) else None
    found = cache.lookup(image.name)
    if found is not None:
        r = found.record
        return Probe(
            image.image_id, image.name, r.source, True, r.format, r.virtual_size, None, codec
        )
    opened = source.open(0)
    head = bytearray()
    ended = True
    with contextlib.closing(opened.chunks):  # type: ignore[type-var]
        for chunk in opened.chunks:
            head += chunk
            if len(head) >= HEAD_BYTES:
                ended = False
                break
    inner_size = source.inner.resolve().size if isinstance(source, CompressedSource) else None
    total = len(head) if ended else (opened.total or (None if codec else image.size))
    inspector = StreamInspector()
    inspector.feed(bytes(head[:HEAD_BYTES]))
    inspector.size = total if total is not None else len(head)
    limit = min(filter(None, (image.max_size, max_virtual_size)), default=None)
    found_fmt = inspector.finish(image.declared_format, limit)
    virtual: int | None = found_fmt.virtual_size
    if total is None and found_fmt.qemu_format == "raw":
        virtual = None  # a raw image's size is its length, not known before the end
    download = inner_size if codec else total
    return Probe(
        image.image_id,
        image.name,
        source.display,
        False,
        found_fmt.format,
        virtual,
        download,
        codec,
    )
