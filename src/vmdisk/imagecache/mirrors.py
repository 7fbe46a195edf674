"""`[image_cache] mirrors`: a URL prefix mapped to a local mirror that is tried first.

`mirrors = ["https://cloud-images.ubuntu.com/=file:///srv/mirror/ubuntu/"]` (Multipass's
`local.image.mirror`): a source under the prefix is read from the mirror when the mirror has
it, else from the original URL. The image id, the cache name and every pin (--checksum,
Glance's hash, a simplestreams sha256) stay the original's, and are checked against the
bytes whichever place served them; once one place has served bytes, a resume stays there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vmdisk.errors import ImageFetchError, ImageNotFound
from vmdisk.imagecache.sources import ImageSource, Opened, SourceFacts

Opener = Callable[[str], ImageSource]


def parse_mirrors(value: Any) -> tuple[tuple[str, str], ...]:
    """["PREFIX=MIRROR", ...] (or one comma-separated string) -> ((prefix, mirror), ...)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"expected a list of PREFIX=MIRROR strings, got {value!r}")
    pairs = []
    for item in (i for i in items if i):
        prefix, sep, mirror = item.partition("=")
        if not sep or not prefix.startswith(("http://", "https://")) or not mirror:
            raise ValueError(f"{item!r} is not http(s)://PREFIX=MIRROR")
        pairs.append((prefix, mirror))
    return tuple(pairs)


def mirror_for(url: str, mirrors: Sequence[tuple[str, str]]) -> str | None:
    """The mirror URL of `url` under the longest matching prefix, if any."""
    best = max((p for p in mirrors if url.startswith(p[0])), key=lambda p: len(p[0]), default=None)
    return None if best is None else best[1] + url[len(best[0]) :]


class MirroredSource:
    """The original source, read from its mirror first."""

    def __init__(self, original: ImageSource, mirror: str, opener: Opener) -> None:
        self.original = original
        self.mirror_text = mirror
        self.opener = opener
        self.active: ImageSource | None = None  # whichever served the first bytes
        self.used_mirror = False

    @property
    def display(self) -> str:
        return self.original.display

    def normalised(self) -> str:
        return self.original.normalised()

    def resolve(self) -> SourceFacts:
        return self.original.resolve()

    def open(self, offset: int = 0) -> Opened:
        if self.active is not None:
            return self.active.open(offset)
        try:
            mirror = self.opener(self.mirror_text)
            opened = mirror.open(offset)
        except (ImageNotFound, ImageFetchError):
            self.active = self.original
            return self.original.open(offset)
        self.active, self.used_mirror = mirror, True
        return opened
