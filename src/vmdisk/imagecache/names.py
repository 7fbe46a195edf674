"""What `--image NAME` means: an alias, then a cached image id, then a path or URL.

`image fetch URL --id noble` followed by `create --image noble` must find the cached image,
not look for a file called `noble`. A bare word that is both an alias (or a cached id) and an
existing file names two images: that is refused with both candidates listed, never guessed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vmdisk.errors import InvalidRequest
from vmdisk.imagecache.aliases import AliasStore, valid_alias
from vmdisk.imagecache.records import BaseRecord, cache_name, read_record
from vmdisk.imagecache.request import ImageRequest

#: Refreshed-away bases keep their record under an id with this prefix; never a user's id.
RETIRED_PREFIX = "retired:"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One thing a name could mean, as the ambiguity error lists it."""

    how: str  # "alias", "image id", "file"
    image_id: str | None
    source: str

    def describe(self) -> str:
        if self.how == "file":
            return f"the file {self.source}"
        return f"{self.how} -> image {self.image_id} (from {self.source})"


class ImageNames:
    """Expands requests against one `_base`: its records and its aliases."""

    def __init__(self, base_dir: Path, aliases: AliasStore) -> None:
        self.base_dir = base_dir
        self.aliases = aliases

    def record(self, image_id: str) -> BaseRecord | None:
        """The record of a cached image id (O(1): the entry name is the id's sha1)."""
        record = read_record(self.base_dir / cache_name(image_id))
        return record if record is not None and record.image_id == image_id else None

    def candidates(self, text: str) -> list[Candidate]:
        found: list[Candidate] = []
        target = self.aliases.get(text) if valid_alias(text) else None
        if target is not None:
            rec = self.record(target)
            found.append(Candidate("alias", target, rec.source if rec else "not cached"))
        # A URL (or any scheme:) names its source, never "whatever is cached under this id":
        # otherwise a base planted under a URL's id would stand in for the URL, and the hit
        # would be checked against the planted source instead of the one asked for.
        rec = self.record(text) if "://" not in text else None
        if rec is not None and text != target:
            found.append(Candidate("image id", text, rec.source))
        if _is_bare_path(text) and Path(text).exists() and found:
            path = str(Path(text).absolute())
            if any(c.source != path for c in found):
                found.append(Candidate("file", None, path))
        return found

    def expand(self, request: ImageRequest) -> ImageRequest:
        """The request with an alias or cached id replaced by the image it names."""
        self._check_id_is_not_an_alias(request)
        found = self.candidates(request.source)
        if not found:
            return request
        if len(found) > 1:
            raise InvalidRequest(
                f"{request.source!r} is ambiguous: " + "; ".join(c.describe() for c in found),
                hint="name a file as ./PATH or file://PATH, an image by its id or alias",
                reason="ambiguous-image",
            )
        chosen = found[0]
        image_id = chosen.image_id or request.image_id
        if request.image_id is not None and request.image_id != image_id:
            raise InvalidRequest(
                f"--image {request.source} is image {image_id}, but the image id given is "
                f"{request.image_id}",
                hint="drop the image id, or give the source it was fetched from",
                reason="id-conflict",
            )
        rec = self.record(image_id) if image_id else None
        if rec is None:
            raise InvalidRequest(
                f"alias {request.source} names image {image_id}, which is not cached",
                hint=f"fetch it again: vmdisk image fetch SOURCE --id {image_id}",
                reason="alias-dangling",
            )
        return dataclasses.replace(request, source=rec.source, image_id=image_id)

    def _check_id_is_not_an_alias(self, request: ImageRequest) -> None:
        wanted = request.image_id
        if wanted is None:
            return
        if wanted.startswith(RETIRED_PREFIX):
            raise InvalidRequest(
                f"image ids starting with {RETIRED_PREFIX!r} are vmdisk's own", reason="bad-id"
            )
        target = self.aliases.get(wanted) if valid_alias(wanted) else None
        if target is not None and target != wanted:
            raise InvalidRequest(
                f"image id {wanted} is an alias of image {target}",
                hint=f"use --image {wanted} without an image id, or another id",
                reason="id-conflict",
            )

    def check_source(self, image_id: str, display: str) -> None:
        """An explicit image id already cached from another source is refused, not reused."""
        rec = self.record(image_id)
        if rec is not None and rec.source != display:
            raise InvalidRequest(
                f"image id {image_id} is already cached from {rec.source}, not {display}",
                hint=f"use another id, or replace it: vmdisk image refresh {image_id}",
                reason="id-conflict",
            )


def _is_bare_path(text: str) -> bool:
    """Not a URL: no scheme longer than one letter (text before "://" counts as a scheme even
    when the rest is malformed, for the source's parser to name the fault)."""
    scheme, sep, _ = text.partition("://")
    if sep:
        return len(scheme) <= 1
    return len(urlsplit(text).scheme) <= 1
