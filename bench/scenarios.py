"""The measured scenarios P1-P9 and full_instance. Each returns one metric dict."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.fixtures import Inputs, host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import ConfigDriveSpec, InstanceSpec
from vmdisk.settings import Flavor

Metric = dict[str, Any]
MetricFn = Callable[..., Metric]
TINY = Flavor("bench", 1, 512, 1)
FULL = Flavor("bench-full", 1, 512, 1, ephemeral_gb=1, swap_mb=512)


def _seconds(
    metric: MetricFn,
    samples: list[float],
    floor: list[float] | float | None,
    target: float,
    **extra: Any,
) -> Metric:
    """A time metric: medians of both sides, the samples kept for min and max."""
    base = statistics.median(floor) if isinstance(floor, list) else floor
    return metric(statistics.median(samples), "s", base, target, samples=samples, **extra)


def _spec(name: str, flavor: Flavor = TINY, **kw: Any) -> InstanceSpec:
    return InstanceSpec(name, str(uuid.uuid4()), flavor, **kw)


def _bare_argv(base: Path, target: Path, size: str = "1G") -> list[str]:
    """The floor: one bare qcow2 overlay, as vmdisk's warm create makes it."""
    return [
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        str(base),
        "-F",
        "raw",
        str(target),
        size,
    ]


def _bare_create(base: Path, target: Path, size: str = "1G") -> float:
    start = time.perf_counter()
    subprocess.run(_bare_argv(base, target, size), check=True)
    return time.perf_counter() - start


def _floor_create(work: Path, base: Path, repeat: int, size: str = "1G") -> list[float]:
    return [_bare_create(base, work / f"floor-{i}.qcow2", size) for i in range(repeat)]


def _warm_samples(
    h: Any, request: ImageRequest, repeat: int, prefix: str, flavor: Flavor = TINY, **kw: Any
) -> tuple[list[float], float]:
    samples, calls = [], []
    for i in range(repeat):
        before = h.runner.calls
        start = time.perf_counter()
        h.create_instance(_spec(f"{prefix}-{i}", flavor, **kw), request)
        samples.append(time.perf_counter() - start)
        calls.append(h.runner.calls - before)
    return samples, statistics.mean(calls)


def _warm_vs_bare_create(
    work: Path,
    inputs: Inputs,
    repeat: int,
    metric: MetricFn,
    name: str,
    flavor: Flavor,
    target: float,
    note: str,
    **spec: Any,
) -> Metric:
    """Warm creates (base cached, templates made) against one bare qemu-img create."""
    h = host(work / name)
    request = ImageRequest(str(inputs.raw))
    base = h.fetch_image(request).path
    h.create_instance(_spec("warmup", flavor, **spec), request)
    floor = _floor_create(work / name, base, repeat)
    samples, calls = _warm_samples(h, request, repeat, name, flavor, **spec)
    return metric(
        statistics.median(samples),
        "s",
        statistics.median(floor),
        target,
        samples=samples,
        subprocesses=calls,
        note=note,
        floor_detail="one qemu-img create -f qcow2 -b BASE -F raw",
    )


def p1_warm_create(work: Path, inputs: Inputs, repeat: int, metric: MetricFn) -> Metric:
    return _warm_vs_bare_create(work, inputs, repeat, metric, "p1", TINY, 1.5, "qcow2 root")


def _cold(work: Path, source: str, i: int) -> float:
    """One cold create in a fresh instances_path, removed afterwards as cp's copy is: on a VM
    the first touch of fresh page-cache memory is slow, and both sides should pay alike."""
    root = work / f"cold-{i}"
    h = host(root)
    start = time.perf_counter()
    h.create_instance(_spec("cold"), ImageRequest(source))
    elapsed = time.perf_counter() - start
    shutil.rmtree(root)
    return elapsed


def _cp_floor(src: Path, work: Path, repeat: int) -> list[float]:
    samples = []
    for i in range(repeat):
        target = work / f"cp-{i}.raw"
        start = time.perf_counter()
        subprocess.run(["cp", "--sparse=always", str(src), str(target)], check=True)
        samples.append(time.perf_counter() - start)
        target.unlink()
    return samples


def p2_cold_raw(work: Path, inputs: Inputs, repeat: int, metric: MetricFn) -> Metric:
    root = work / "p2"
    root.mkdir()
    floor = statistics.median(_cp_floor(inputs.raw, root, repeat))
    files = [_cold(root / "file", str(inputs.raw), i) for i in range(repeat)]
    https = [_cold(root / "http", inputs.server.url("bench.raw"), i) for i in range(repeat)]
    http = _seconds(metric, https, floor, 2.0)
    out = _seconds(
        metric,
        files,
        floor,
        2.0,
        floor_detail="cp --sparse=always of the same file",
        http=http,
    )
    out["met"] = out["met"] and http["met"]
    return out


def p3_cold_qcow2(work: Path, inputs: Inputs, repeat: int, metric: MetricFn) -> Metric:
    root = work / "p3"
    root.mkdir()
    floor = []
    for i in range(repeat):
        target = root / f"conv-{i}.raw"
        start = time.perf_counter()
        subprocess.run(
            ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(inputs.qcow2), str(target)],
            check=True,
        )
        floor.append(time.perf_counter() - start)
        target.unlink()
    samples = [_cold(root, str(inputs.qcow2), i) for i in range(repeat)]
    return _seconds(
        metric,
        samples,
        floor,
        2.5,
        floor_detail="one qemu-img convert -f qcow2 -O raw",
    )


def p4_parallel_warm(work: Path, inputs: Inputs, repeat: int, metric: MetricFn) -> Metric:
    h = host(work / "p4")
    request = ImageRequest(str(inputs.raw))
    h.fetch_image(request)
    h.create_instance(_spec("warmup"), request)
    one, _ = _warm_samples(h, request, repeat, "single")
    walls = []
    for r in range(repeat):
        threads = [
            threading.Thread(target=h.create_instance, args=(_spec(f"par-{r}-{i}"), request))
            for i in range(8)
        ]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        walls.append(time.perf_counter() - start)
    assert len(h.instances()) == 1 + repeat + 8 * repeat
    base = h.cache.lookup(h.cache.identify(h.resolve(request))[1])
    assert base is not None
    bare = []
    for r in range(repeat):
        procs = []
        start = time.perf_counter()
        for i in range(8):
            procs.append(subprocess.Popen(_bare_argv(base.path, work / "p4" / f"bare-{r}-{i}")))
        for proc in procs:
            proc.wait()
        bare.append(time.perf_counter() - start)
    return _seconds(
        metric,
        walls,
        bare,
        1.5,
        floor_detail="8 concurrent bare qemu-img create processes, same run",
        concurrency=8,
        one_warm_create=round(statistics.median(one), 6),
        ratio_to_one_warm_create=round(statistics.median(walls) / statistics.median(one), 3),
    )


def p5_stampede(work: Path, inputs: Inputs, metric: MetricFn) -> Metric:
    root = work / "p5"
    url = inputs.server.url("bench.qcow2")
    before = inputs.server.hits.get("/bench.qcow2", 0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.stampede", str(root), url, str(p)], stdout=subprocess.PIPE
        )
        for p in range(4)
    ]
    results = [json.loads(p.communicate()[0]) for p in procs]
    downloads = inputs.server.hits.get("/bench.qcow2", 0) - before
    conversions = sum(r["conversions"] for r in results)
    created = sum(r["created"] for r in results)
    out = metric(
        float(downloads),
        "downloads",
        None,
        1,
        ratio_target=False,
        conversions=conversions,
        creates=created,
        processes=4,
    )
    out["met"] = downloads == 1 and conversions == 1 and created == 16
    return out


def p6_huge_root(work: Path, inputs: Inputs, repeat: int, metric: MetricFn) -> Metric:
    h = host(work / "p6")
    request = ImageRequest(str(inputs.raw))
    h.fetch_image(request)
    h.create_instance(_spec("warmup"), request)
    small, _ = _warm_samples(h, request, repeat, "small")
    huge, _ = _warm_samples(h, request, repeat, "huge", Flavor("huge", 1, 512, 64 * 1024))
    base = h.fetch_image(request).path
    bare_small = statistics.median(_floor_create(work / "p6", base, repeat, "1G"))
    bare_huge = statistics.median(
        [_bare_create(base, work / "p6" / f"huge-{i}.qcow2", "64T") for i in range(repeat)]
    )
    return _seconds(
        metric,
        huge,
        small,
        1.1,
        floor_detail="the same warm create with a 1 GiB root",
        qemu_img_alone_ratio=round(bare_huge / bare_small, 3),
        vmdisk_overhead_small=round(statistics.median(small) - bare_small, 6),
        vmdisk_overhead_huge=round(statistics.median(huge) - bare_huge, 6),
    )


def p7_sparse_base(work: Path, inputs: Inputs, metric: MetricFn) -> Metric:
    h = host(work / "p7")
    base = h.fetch_image(ImageRequest(inputs.server.url("bench.raw"))).path
    allocated = base.stat().st_blocks * 512
    return metric(
        float(allocated),
        "bytes",
        float(inputs.data_bytes),
        1.05,
        floor_detail="the image's non-zero data",
    )


def p8_fetch_rss(work: Path, inputs: Inputs, metric: MetricFn) -> Metric:
    """Peak RSS measured by GNU time around the process: a child's own rusage would also count
    the pages it shared with this (large) benchmark process between fork and exec."""
    root = work / "p8"
    result = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "%M",
            sys.executable,
            "-m",
            "vmdisk",
            "--json",
            "--instances-path",
            str(root),
            "image",
            "fetch",
            inputs.server.url("bench2g.raw"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    rss_kib = int(result.stderr.strip().splitlines()[-1])
    return metric(
        rss_kib / 1024,
        "MiB",
        None,
        100,
        ratio_target=False,
        floor_detail="absolute: peak RSS of the whole vmdisk process",
    )


def p9_prune_planning(work: Path, count: int, metric: MetricFn) -> Metric:
    from bench.prunetree import make_tree

    root = work / "p9"
    make_tree(root, count)
    h = host(root)
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        plan, _ = h.prune(dry_run=True)
        samples.append(time.perf_counter() - start)
    in_use = sum(1 for d in plan.decisions if str(d.action) == "touch")
    return _seconds(
        metric,
        samples,
        None,
        2.0,
        ratio_target=False,
        bases=count,
        instances=count,
        in_use=in_use,
    )


def full_instance(work: Path, inputs: Inputs, repeat: int, metric: MetricFn) -> Metric:
    drive = ConfigDriveSpec(user_data=b"#cloud-config\n{}\n", hostname="bench")
    return _warm_vs_bare_create(
        work,
        inputs,
        repeat,
        metric,
        "full",
        FULL,
        4.0,
        "root+ephemeral+swap+config drive+libvirt.xml",
        config_drive=drive,
    )
