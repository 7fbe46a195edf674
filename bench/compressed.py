"""Fetching a compressed image against its floor: the codec's own tool decompressing it.

    python -m bench.compressed [--size-mib 128] [--repeat 3]

For each of xz, gz and zst: the median seconds of `vmdisk image fetch IMAGE.raw.EXT` (a fresh
cache each time: decompress, hash, inspect, write sparse, record), and the median of the floor
`xz -dc | gzip -dc | zstd -dc > /dev/null` on the same file in the same run; ratio = fetch /
floor. The fetch of the uncompressed raw (same run) is the second floor: ratio_to_plain_fetch
is what decompressing while streaming adds to a fetch (process start, qemu-img info and the
record are in both). One JSON document on stdout. A measurement, never an assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
TOOLS = {"xz": ["xz", "-T1", "-3"], "gz": ["gzip", "-6"], "zst": ["zstd", "-q", "-3"]}


def make_raw(path: Path, size_mib: int) -> None:
    """Half random (incompressible) MiBs, half text-like, a quarter holes: like a filled disk."""
    with open(path, "wb") as fh:
        for i in range(size_mib):
            if i % 4 == 0:
                fh.seek(MiB, os.SEEK_CUR)
            elif i % 4 == 1:
                fh.write(os.urandom(MiB))
            else:
                fh.write((b"vmdisk %08d " % i) * (MiB // 16))
        fh.truncate(size_mib * MiB)


def seconds(argv: list[str], repeat: int, out: Any = subprocess.DEVNULL) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, stdout=out, check=True)
        samples.append(time.perf_counter() - start)
    return samples


def fetch_seconds(work: Path, packed: Path, repeat: int) -> list[float]:
    samples = []
    for i in range(repeat):
        root = work / f"root-{packed.suffix}-{i}"
        argv = [sys.executable, "-m", "vmdisk", "--json", "--instances-path", str(root)]
        start = time.perf_counter()
        subprocess.run(
            [*argv, "image", "fetch", str(packed)], stdout=subprocess.DEVNULL, check=True
        )
        samples.append(time.perf_counter() - start)
        shutil.rmtree(root)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmdisk-bench-compressed-", dir="/var/tmp"))
    try:
        raw = work / "disk.raw"
        make_raw(raw, args.size_mib)
        plain = statistics.median(fetch_seconds(work, raw, args.repeat))
        results: dict[str, Any] = {
            "size_mib": args.size_mib,
            "repeat": args.repeat,
            "plain_fetch_s": round(plain, 3),
        }
        for ext, tool in TOOLS.items():
            packed = work / f"disk.raw.{ext}"
            with open(packed, "wb") as fh:
                subprocess.run([*tool, "-c", str(raw)], stdout=fh, check=True)
            floor = statistics.median(seconds([tool[0], "-dc", str(packed)], args.repeat))
            fetch = fetch_seconds(work, packed, args.repeat)
            value = statistics.median(fetch)
            results[ext] = {
                "compressed_mib": round(packed.stat().st_size / MiB, 1),
                "fetch_s": round(value, 3),
                "floor_s": round(floor, 3),
                "ratio": round(value / floor, 2),
                "ratio_to_plain_fetch": round(value / plain, 2),
                "min_s": round(min(fetch), 3),
                "max_s": round(max(fetch), 3),
            }
        print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
