"""Byte sizes: parse what people type ("10G", "512MiB", "1.5T") and print it back."""

from __future__ import annotations

import re

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
PiB = 1024 * TiB
EiB = 1024 * PiB

_FACTORS = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB, "P": PiB, "E": EiB}
_SIZE_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[KMGTPE]?)(?:I?B)?", re.IGNORECASE)

#: Anything larger cannot be a disk: qemu's own limit for a virtual size is 2**63 - 512.
MAX_SIZE = 2**63 - 1


def parse_size(text: str | int) -> int:
    """Parse a size in bytes; suffixes are binary (as qemu-img reads them): 1G == 1 GiB.

    Raises ValueError with a message fit for a user.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE_RE.fullmatch(text.strip())
        if not match:
            raise ValueError(f"not a size: {text!r} (use a number with K, M, G, T or P, e.g. 20G)")
        value = int(float(match["num"]) * _FACTORS[match["unit"].upper()])
    if value < 0:
        raise ValueError(f"a size cannot be negative: {text!r}")
    if value > MAX_SIZE:
        raise ValueError(f"size {text!r} is larger than any disk can be")
    return value


def format_size(n: int) -> str:
    """1073741824 -> '1.0 GiB'; exact powers keep one decimal so columns line up."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(size) < 1024 or unit == "PiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
