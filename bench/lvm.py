"""LVM creation times on real device-mapper: warm creates, thick vs thin, against bare lvm2.

Runs INSIDE the Debian test guest (the host kernel has no device-mapper): `make bench-lvm`
boots it the way `make test-lvm` does and runs

    python3 bench/lvm.py --vg vg0 --pool pool [--repeat 5]

Prints a table to stderr and one JSON document to stdout, shaped like bench/run.py's: medians
with min and max, ratios value / floor, floors measured in this run on the same volume group.

- thick_create: a warm `create_instance` (the base is in _base) writing the base into a thick
  LV of the flavor's size, against one bare `lvcreate -L` of that size.
- thin_create: a warm `create_instance` in the thin pool (the base already imported), against
  one bare `lvcreate -s` of the base LV; target 2x. Its `floor_with_extend` is a bare
  `lvcreate -s` plus `lvextend` to the flavor's size, which is what vmdisk has to do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmdisk.backends.lvm import BASE_PREFIX
from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import InstanceSpec
from vmdisk.settings import Flavor, load_settings

MiB = 1 << 20
FLAVOR = Flavor("bench.lvm", 1, 256, 1)  # a 1 GiB root, nothing else
Metric = dict[str, Any]


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def make_image(work: Path) -> Path:
    """A 64 MiB ext4 image with 16 MiB of file data, like a small cloud image."""
    tree = work / "tree"
    tree.mkdir()
    (tree / "data.bin").write_bytes(os.urandom(16 * MiB))
    raw = work / "base.raw"
    sh("truncate", "-s", str(64 * MiB), str(raw))
    sh("mkfs.ext4", "-q", "-F", "-d", str(tree), str(raw))
    return raw


def make_host(root: Path, vg: str, **libvirt: Any) -> Host:
    s = load_settings(None, env={}, overrides={"instances_path": str(root)})
    lib = dataclasses.replace(
        s.libvirt,
        images_type="lvm",
        images_volume_group=vg,
        virt_type="qemu",
        volume_clear="none",  # deletes are not measured; don't spend the run zeroing
        **libvirt,
    )
    return Host(dataclasses.replace(s, libvirt=lib))


def samples(step: Callable[[], Callable[[], None]], repeat: int) -> list[float]:
    """Time `step()` (which returns its own untimed cleanup) `repeat` times."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        cleanup = step()
        out.append(time.perf_counter() - start)
        cleanup()
    return out


def warm_create(h: Host, image: Path) -> Callable[[], None]:
    name = f"b-{uuid.uuid4().hex[:8]}"
    h.create_instance(InstanceSpec(name, str(uuid.uuid4()), FLAVOR), ImageRequest(str(image)))
    return lambda: h.delete_instance(name)


def bare(vg: str, *argv: str, then: tuple[str, ...] = ()) -> Callable[[], None]:
    name = f"bare_{uuid.uuid4().hex[:8]}"
    sh("lvcreate", "-q", "-y", "-n", name, *argv)
    if then:
        sh(*then, f"{vg}/{name}")
    return lambda: sh("lvremove", "-q", "-y", f"{vg}/{name}")


def metric(values: list[float], floor: list[float], target: float | None, **extra: Any) -> Metric:
    value, base = statistics.median(values), statistics.median(floor)
    ratio = value / base
    return {
        "value": round(value, 4),
        "unit": "s",
        "floor": round(base, 4),
        "ratio": round(ratio, 3),
        "target": target,
        "met": None if target is None else ratio <= target,
        "median": round(value, 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "samples": len(values),
        **extra,
    }


def run(vg: str, pool: str, repeat: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vmdisk-bench-lvm-", dir="/var/tmp"))
    image = make_image(work)
    size = f"{FLAVOR.root_gb << 30}b"
    thick = make_host(work / "thick", vg)
    thin = make_host(work / "thin", vg, images_thin_pool=pool)
    warm_create(thick, image)()  # fetch into _base once
    first = thin.create_instance(  # and import into the pool once
        InstanceSpec("b-first", str(uuid.uuid4()), FLAVOR), ImageRequest(str(image))
    )
    base = f"{BASE_PREFIX}{first.record.image_base}"
    thin.delete_instance("b-first")
    metrics: dict[str, Metric] = {}
    floor_thick = samples(lambda: bare(vg, "-L", size, vg), repeat)
    metrics["thick_create"] = metric(
        samples(lambda: warm_create(thick, image), repeat),
        floor_thick,
        None,
        note="bare lvcreate -L 1G; vmdisk also writes the 64 MiB base and zeroes the rest",
    )
    snap = ("-s", "-kn", "-ay", f"{vg}/{base}")
    floor_snap = samples(lambda: bare(vg, *snap), repeat)
    extend = ("lvextend", "-q", "-y", "-L", size)
    floor_ext = samples(lambda: bare(vg, *snap, then=extend), repeat)
    metrics["thin_create"] = metric(
        samples(lambda: warm_create(thin, image), repeat),
        floor_snap,
        2.0,
        floor_with_extend=round(statistics.median(floor_ext), 4),
        ratio_with_extend=None,
        note="bare lvcreate -s of the base LV; the root is also extended to 1 GiB",
    )
    m = metrics["thin_create"]
    m["ratio_with_extend"] = round(m["value"] / m["floor_with_extend"], 3)
    sh("lvremove", "-q", "-y", f"{vg}/{base}")
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return {"machine": machine(), "repeat": repeat, "metrics": metrics}


def machine() -> dict[str, Any]:
    lvm = subprocess.run(["lvm", "version"], capture_output=True, text=True, check=True)
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "lvm": lvm.stdout.splitlines()[0].strip(),
        "python": platform.python_version(),
        "where": "Debian test guest under TCG (tests/guests/debian.py)",
    }


def table(metrics: dict[str, Metric]) -> str:
    lines = [f"{'metric':14} {'median':>9} {'floor':>9} {'ratio':>7} {'target':>7}  notes"]
    for key, m in metrics.items():
        target = "-" if m["target"] is None else f"{m['target']:g}"
        lines.append(
            f"{key:14} {m['value']:>8.3f}s {m['floor']:>8.3f}s {m['ratio']:>7.3g} "
            f"{target:>7}  {m.get('note', '')}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vg", default="vg0")
    parser.add_argument("--pool", default="pool")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    result = run(args.vg, args.pool, args.repeat)
    print(table(result["metrics"]), file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
