"""RBD creation times against a real one-node Ceph and Glance (started here, as the tests do).

python -m bench.rbd     # prints JSON: cloneable (Glance rbd store) vs not (file store)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.services.ceph import ceph_cluster
from tests.services.glance import glance_server

from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import InstanceSpec
from vmdisk.settings import Flavor, load_settings

MiB = 1024 * 1024
FLAVOR = Flavor("b", 1, 256, 1)


def make_host(root: Path, conf: Path, api: str) -> Host:
    s = load_settings(None, env={}, overrides={"instances_path": str(root)})
    lib = dataclasses.replace(
        s.libvirt, images_type="rbd", images_rbd_ceph_conf=str(conf), virt_type="qemu"
    )
    return Host(
        dataclasses.replace(s, libvirt=lib, glance=dataclasses.replace(s.glance, api_url=api))
    )


def times(h: Host, image_id: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        h.create_instance(
            InstanceSpec(f"i{uuid.uuid4().hex[:8]}", str(uuid.uuid4()), FLAVOR),
            ImageRequest(f"glance://{image_id}"),
        )
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="vmdisk-bench-rbd-", dir="/var/tmp"))
    try:
        image = work / "img.raw"
        with open(image, "wb") as fh:
            fh.write(bytes(range(256)) * (64 * MiB // 256))
            fh.truncate(256 * MiB)
        with ceph_cluster(work / "ceph") as ceph, glance_server(work / "glance", ceph.conf) as g:
            rbd_id, file_id = g.upload(image, "raw", "ceph"), g.upload(image, "raw", "file")
            h = make_host(work / "inst", ceph.conf, g.url)
            clone = times(h, rbd_id, 10)
            first = times(h, file_id, 1)[0]
            later = times(h, file_id, 10)
        result = {
            "cloneable_ms": {
                "median": round(statistics.median(clone) * 1000, 1),
                "min": round(min(clone) * 1000, 1),
                "max": round(max(clone) * 1000, 1),
                "target": 50,
            },
            "not_cloneable_first_ms": round(first * 1000, 1),
            "not_cloneable_later_ms": {
                "median": round(statistics.median(later) * 1000, 1),
                "min": round(min(later) * 1000, 1),
            },
            "image": "256 MiB raw, 64 MiB of data",
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
