"""What lives in `_base`: classify each name as Nova's cache manager does, plus our own files."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from vmdisk.fsutil import is_temp_name
from vmdisk.imagecache.records import RECORD_SUFFIX


class EntryKind(StrEnum):
    ORIGINAL = "original"  # <sha1>
    RESIZED = "resized"  # <sha1>_<N>, <sha1>_sm (legacy)
    SWAP = "swap"  # swap_<MB>
    EPHEMERAL = "ephemeral"  # ephemeral_<GB>_<hash7>
    RECORD = "record"  # <sha1>.info
    TEMPORARY = "temporary"  # *.part-<rand>, probes, Nova's <sha1>.part / .converted
    UNKNOWN = "unknown"


_SHA1 = re.compile(r"[0-9a-f]{40}")
_RESIZED = re.compile(r"[0-9a-f]{40}_(?:[0-9]+|sm)")
_SWAP = re.compile(r"swap_[0-9]+")
_EPHEMERAL = re.compile(r"ephemeral_[0-9]+_[0-9A-Za-z]{7}")
#: Nova's fetch_to_raw leftovers after a crash: `<sha1>.part`, `<sha1>.converted`.
_NOVA_TEMPORARY = re.compile(r"[0-9a-f]{40}(?:_[0-9]+)?\.(?:part|converted)")


def classify(name: str) -> EntryKind:
    if is_temp_name(name) or name.startswith((".directio.test.", ".fallocate_test.", ".drive-")):
        return EntryKind.TEMPORARY
    if _NOVA_TEMPORARY.fullmatch(name):
        return EntryKind.TEMPORARY
    if _SHA1.fullmatch(name):
        return EntryKind.ORIGINAL
    if _RESIZED.fullmatch(name):
        return EntryKind.RESIZED
    if _SWAP.fullmatch(name):
        return EntryKind.SWAP
    if _EPHEMERAL.fullmatch(name):
        return EntryKind.EPHEMERAL
    if name.endswith(RECORD_SUFFIX) and _SHA1.fullmatch(name[: -len(RECORD_SUFFIX)]):
        return EntryKind.RECORD
    return EntryKind.UNKNOWN


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    kind: EntryKind
    mtime: float
    allocated: int
    size: int
    regular: bool


def scan(base_dir: Path) -> list[Entry]:
    """One lstat per name; symlinks and directories are listed as not regular, never followed."""
    entries = []
    try:
        it = list(os.scandir(base_dir))
    except FileNotFoundError:
        return []
    for item in it:
        try:
            st = item.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        entries.append(
            Entry(
                item.name,
                classify(item.name),
                st.st_mtime,
                st.st_blocks * 512,
                st.st_size,
                item.is_file(follow_symlinks=False),
            )
        )
    return sorted(entries, key=lambda e: e.name)
