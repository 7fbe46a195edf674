"""Pull of a containerDisk from a loopback registry against `skopeo copy` of the same image.

    python -m bench.oci            # prints JSON; also step "oci_pull" of python -m bench.run

The input is the benchmark's 1 GiB raw image (256 MiB of random data, the rest a hole), cached,
then pushed by vmdisk to a real docker-registry on 127.0.0.1 (qcow2 -c inside one gzip layer).
The floor is `skopeo copy docker://…@digest dir:…` — download and verify the blobs into a
directory — measured in the same run. vmdisk's pull does that and more: gunzip and untar in the
stream, the intake's inspection, `qemu-img check`, the conversion to raw and the raw sha256.
`stream_s` times the source alone (blobs fetched, verified, gunzipped, untarred; bytes dropped):
the transport's share, against the same floor.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.services import registry as registry_service

from bench.fixtures import GiB, MiB, host, write_image
from vmdisk.host import Host
from vmdisk.imagecache.oci import Reference
from vmdisk.imagecache.oci_push import push_base
from vmdisk.imagecache.oci_source import open_oci, registry_client
from vmdisk.imagecache.store import ImageRequest

Metric = dict[str, Any]
MetricFn = Callable[..., Metric]


def _oci_host(root: Path, address: str) -> Host:
    h = host(root)
    oci = dataclasses.replace(h.settings.oci, insecure_registries=(address,))
    return Host(dataclasses.replace(h.settings, oci=oci))


def oci_pull(work: Path, raw: Path, repeat: int, metric: MetricFn) -> Metric:
    with registry_service.running(work / "registry") as reg:
        a = _oci_host(work / "push-host", reg.address)
        cached = a.fetch_image(ImageRequest(str(raw), declared_format="raw"))
        ref = Reference.parse(reg.url("bench/disk:v1"))
        client = registry_client(reg.address, a.settings.oci)
        start = time.perf_counter()
        pushed = push_base(
            client, a.runner, ref, cached.path, cached.record,
            platform="linux/amd64",
        )  # fmt: skip
        push_s = time.perf_counter() - start
        pinned = ref.pinned(pushed.digest)

        def pull_once(i: int) -> float:
            h = _oci_host(work / f"pull-{i}", reg.address)
            begin = time.perf_counter()
            got = h.fetch_image(ImageRequest(pinned))
            took = time.perf_counter() - begin
            if got.record.sha256 != cached.record.sha256 or got.image_id != pushed.digest:
                raise SystemExit("bench: the pulled base differs from the pushed one")
            shutil.rmtree(work / f"pull-{i}")
            return took

        def stream_once() -> float:
            source = open_oci(pinned, _oci_host(work / "stream", reg.address).settings.oci)
            begin = time.perf_counter()
            for _ in source.open(0).chunks:
                pass
            return time.perf_counter() - begin

        def skopeo_once(i: int) -> float:
            out = work / f"skopeo-{i}"
            argv = ["skopeo", "copy", "-q", "--src-tls-verify=false",
                    f"docker://{reg.address}/bench/disk@{pushed.digest}", f"dir:{out}"]  # fmt: skip
            begin = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            took = time.perf_counter() - begin
            shutil.rmtree(out)
            return took

        pulls, copies, streams = [], [], []
        for i in range(repeat):  # interleaved, so all see the same page cache and noise
            copies.append(skopeo_once(i))
            pulls.append(pull_once(i))
            streams.append(stream_once())
    stream = statistics.median(streams)
    return metric(
        statistics.median(pulls), "s", statistics.median(copies), 1.5,
        samples=pulls, push_s=round(push_s, 3), floor_samples=[round(c, 4) for c in copies],
        stream_s=round(stream, 4), stream_ratio=round(stream / statistics.median(copies), 3),
        note="pull 1 GiB (256 MiB data) vs skopeo copy to dir:; stream_* = the source alone",
    )  # fmt: skip


def main() -> None:
    from bench.run import metric

    work = Path(tempfile.mkdtemp(prefix="vmdisk-bench-oci-", dir="/var/tmp"))
    try:
        raw = work / "bench.raw"
        write_image(raw, 256 * MiB, GiB, seed=1)
        result = oci_pull(work, raw, 5, metric)
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
