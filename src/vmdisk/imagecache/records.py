"""The sidecar record kept next to each base (`_base/<sha1>.info`) and image identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from vmdisk.errors import InvalidRequest
from vmdisk.fsutil import write_atomic
from vmdisk.imagecache.digest import TAG

RECORD_SUFFIX = ".info"
_DIGEST_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}


def cache_name(image_id: str) -> str:
    """Nova's name for a cached image: sha1 of the id, 40 hex characters."""
    return hashlib.sha1(image_id.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: str
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """`sha256:HEX` (also sha512, sha1, md5). Hex digits are compared case-insensitively."""
        algorithm, sep, digest = text.partition(":")
        algorithm = algorithm.lower()
        if not sep or algorithm not in _DIGEST_LENGTHS:
            raise InvalidRequest(
                f"checksum {text!r} must be ALGORITHM:HEX with ALGORITHM one of "
                + ", ".join(sorted(_DIGEST_LENGTHS)),
                reason="bad-checksum",
            )
        if not re.fullmatch(r"[0-9a-fA-F]+", digest) or len(digest) != _DIGEST_LENGTHS[algorithm]:
            raise InvalidRequest(
                f"a {algorithm} checksum is {_DIGEST_LENGTHS[algorithm]} hex digits, "
                f"got {len(digest)} characters",
                reason="bad-checksum",
            )
        return cls(algorithm, digest.lower())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


@dataclass(frozen=True, slots=True)
class BaseRecord:
    """Everything intake learned about a base; written before the base is renamed into place."""

    image_id: str
    source: str
    declared_format: str | None
    detected_format: str
    format: str  # what the base file is now: raw unless force_raw_images is off
    virtual_size: int
    size: int  # apparent size of the base file, to notice a replaced file
    sha256_download: str
    sha256: str  # of the cached base file itself
    fetched_at: str
    cluster_size: int | None = None
    kind: str = "image"
    #: source.normalised() of what was fetched: a hit from another source is refused.
    source_id: str | None = None
    #: digests of the download by algorithm (sha256 always; the pinned one if it was another).
    checksums: dict[str, str] = field(default_factory=dict)

    def download_digest(self, algorithm: str) -> str | None:
        """The download's digest in a user's algorithm, when it was computed at fetch time;
        a record from before the tree digest keeps a plain sha256 in sha256_download."""
        found = self.checksums.get(algorithm)
        legacy = self.sha256_download
        if found is None and algorithm == "sha256" and legacy and not legacy.startswith(TAG):
            return legacy
        return found

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> BaseRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        raw = json.loads(data)
        return cls(**{k: v for k, v in raw.items() if k in fields})


def record_path(base: Path) -> Path:
    return base.with_name(base.name + RECORD_SUFFIX)


def read_record(base: Path) -> BaseRecord | None:
    try:
        return BaseRecord.from_json(record_path(base).read_bytes())
    except (FileNotFoundError, ValueError, TypeError):
        return None


def write_record(base: Path, record: BaseRecord) -> None:
    write_atomic(record_path(base), record.to_json())
