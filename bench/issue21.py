"""W1-W3 (whole `vmdisk` processes), R1-R2 (reflink file system), X1 (extended_l2 overlays).

Each returns one metric dict, its floor measured in the same run, like scenarios.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.fixtures import GiB, Inputs, MiB, host, write_image
from bench.procs import time_command, tool, vmdisk_argv
from vmdisk.fsutil import direct_io_supported
from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import InstanceSpec
from vmdisk.settings import Flavor
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import Limits, SubprocessRunner

Metric = dict[str, Any]
MetricFn = Callable[..., Metric]
TINY = Flavor("bench", 1, 512, 1)


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def _config(work: Path) -> Path:
    """TCG by setting, so no command probes KVM by booting (that is not what is measured)."""
    path = work / "bench.toml"
    path.write_text('[libvirt]\nvirt_type = "qemu"\n')
    return path


def w1_startup(work: Path, runs: int, metric: MetricFn) -> dict[str, Metric]:
    """`vmdisk --version`, `--help`, `list` on an empty path against `python -c pass`."""
    empty = work / "w1-empty"
    empty.mkdir()
    floor = time_command([sys.executable, "-c", "pass"], runs)
    commands = {
        "W1 --version": ["--version"],
        "W1 --help": ["--help"],
        "W1 list": ["--config", str(_config(work)), "--instances-path", str(empty), "list"],
    }
    out = {}
    for key, args in commands.items():
        samples = time_command(vmdisk_argv(*args), runs)
        out[key] = metric(
            _median(samples),
            "s",
            _median(floor),
            3.0,
            samples=samples,
            floor_detail=f"python -c pass, same interpreter ({tool()})",
        )
    return out


def _warm_process(
    work: Path,
    inputs: Inputs,
    runs: int,
    metric: MetricFn,
    name: str,
    extra: list[str],
    target: float,
) -> Metric:
    """A warm create as a whole process (base cached, templates made) against one bare
    `qemu-img create -b` process; the instance is deleted (untimed) between runs."""
    root = work / name
    config = _config(work)
    base_args = ["--config", str(config), "--instances-path", str(root)]
    create = vmdisk_argv(*base_args, "create", name, "--image", str(inputs.raw), *extra)
    delete = vmdisk_argv(*base_args, "delete", name)
    subprocess.run(create, check=True, stdout=subprocess.DEVNULL)  # fetch + templates
    prepare = ["sh", "-c", " ".join(delete) + " >/dev/null 2>&1; true"]
    samples = time_command(create, runs, prepare)
    base = next(p for p in (root / "_base").iterdir() if len(p.name) == 40)
    target_file = work / f"{name}-floor.qcow2"
    bare = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw"]
    floor = time_command([*bare, str(target_file), "1G"], runs, ["rm", "-f", str(target_file)])
    return metric(
        _median(samples),
        "s",
        _median(floor),
        target,
        samples=samples,
        floor_detail=f"one qemu-img create -f qcow2 -b BASE -F raw process ({tool()})",
        command="vmdisk create " + " ".join(extra),
    )


def w2_warm_process(work: Path, inputs: Inputs, runs: int, metric: MetricFn) -> Metric:
    return _warm_process(work, inputs, runs, metric, "w2", ["--flavor", "m1.tiny"], 4.0)


def w3_full_process(work: Path, inputs: Inputs, runs: int, metric: MetricFn) -> Metric:
    extra = ["--vcpus", "1", "--ram-mb", "512", "--root-gb", "1", "--ephemeral-gb", "1"]
    extra += ["--swap-mb", "512", "--config-drive"]
    return _warm_process(work, inputs, runs, metric, "w3", extra, 8.0)


@contextlib.contextmanager
def reflink_fs(work: Path) -> Iterator[Path | None]:
    """A fresh XFS with reflink=1 on a loop device (platform-notes.md), or None if impossible."""
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        yield None
        return
    image, mnt = work / "xfs.img", work / "xfs"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(6 * GiB)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _cp_reflink(src: Path, scratch: Path, runs: int) -> list[float]:
    samples = []
    for i in range(runs):
        dst = scratch / f"cp-{i}.raw"
        start = time.perf_counter()
        subprocess.run(["cp", "--reflink=always", str(src), str(dst)], check=True)
        samples.append(time.perf_counter() - start)
        dst.unlink()
    return samples


def _skipped(metric: MetricFn, target: float) -> Metric:
    out = metric(0.0, "s", None, target, note="skipped: needs root and mkfs.xfs")
    out["met"] = False
    return out


def _spec(name: str) -> InstanceSpec:
    return InstanceSpec(name, str(uuid.uuid4()), TINY)


def r1_r2_reflink(work: Path, runs: int, metric: MetricFn) -> dict[str, Metric]:
    with reflink_fs(work) as mnt:
        if mnt is None:
            return {"R1": _skipped(metric, 2.0), "R2": _skipped(metric, 3.0)}
        source = mnt / "bench.raw"
        write_image(source, 256 * MiB, GiB, seed=3)
        floor = _cp_reflink(source, mnt, runs)
        plain = host(mnt / "r1").settings
        lib = dataclasses.replace(plain.libvirt, images_type="flat")
        h = Host(dataclasses.replace(plain, libvirt=lib))
        request = ImageRequest(str(source))
        h.create_instance(_spec("warmup"), request)
        warm = []
        for i in range(runs):
            start = time.perf_counter()
            h.create_instance(_spec(f"flat-{i}"), request)
            warm.append(time.perf_counter() - start)
        cold = []
        for i in range(runs):
            root = mnt / f"r2-{i}"
            start = time.perf_counter()
            host(root).create_instance(_spec("cold"), request)
            cold.append(time.perf_counter() - start)
            shutil.rmtree(root)
        detail = "cp --reflink=always of the same 1 GiB file (256 MiB data), XFS reflink=1"
        return {
            "R1": metric(
                _median(warm), "s", _median(floor), 2.0, samples=warm, floor_detail=detail
            ),
            "R2": metric(
                _median(cold), "s", _median(floor), 3.0, samples=cold, floor_detail=detail
            ),
        }


def _io_commands(path: Path, writes: int) -> Path:
    rng = random.Random(21)
    lines = [f"write -P 0x5a {rng.randrange(0, GiB, 4096)} 4k" for _ in range(writes)]
    path.write_text("\n".join(lines) + "\n")
    return path


def x1_overlay_writes(work: Path, inputs: Inputs, runs: int, metric: MetricFn) -> Metric:
    """First 4 KiB random writes into a fresh overlay: today's (64 KiB clusters) against
    extended_l2 (128 KiB clusters, 4 KiB subclusters), made by vmdisk's own qemu-img wrapper
    and written by qemu-io, cache=none where O_DIRECT works (Nova's default) else writeback."""
    root = work / "x1"
    root.mkdir()
    base = host(root / "h").fetch_image(ImageRequest(str(inputs.raw))).path
    qemu = QemuImg(SubprocessRunner(), Limits(None, None))
    cmds = _io_commands(root / "writes.txt", 2000)
    cache = "none" if direct_io_supported(root) else "writeback"
    results: dict[bool, tuple[list[float], int]] = {}
    for extended in (False, True):
        times, growth = [], []
        for i in range(runs):
            overlay = root / f"o-{extended}-{i}.qcow2"
            qemu.create(
                overlay, "qcow2", GiB, backing_file=base, backing_format="raw", extended_l2=extended
            )
            before = overlay.stat().st_blocks * 512
            start = time.perf_counter()
            with open(cmds) as stdin:
                subprocess.run(
                    ["qemu-io", "-t", cache, "-f", "qcow2", str(overlay)],
                    stdin=stdin,
                    stdout=subprocess.DEVNULL,
                    check=True,
                )
            times.append(time.perf_counter() - start)
            growth.append(overlay.stat().st_blocks * 512 - before)
            overlay.unlink()
        results[extended] = (times, int(statistics.median(growth)))
    plain_t, plain_g = results[False]
    ext_t, ext_g = results[True]
    speedup = _median(plain_t) / _median(ext_t)
    out = metric(
        speedup,
        "x",
        None,
        2.0,
        lower_is_better=False,
        ratio_target=False,
        floor_detail="today's overlay (64 KiB clusters, no subclusters), same writes",
        writes=2000,
        cache=cache,
        plain_seconds=round(_median(plain_t), 4),
        extended_seconds=round(_median(ext_t), 4),
        plain_growth_bytes=plain_g,
        extended_growth_bytes=ext_g,
        growth_ratio=round(ext_g / plain_g, 4) if plain_g else None,
        note=f"growth {ext_g / max(plain_g, 1):.3f} of today's (target <= 0.125)",
    )
    out["met"] = speedup >= 2.0 and ext_g * 8 <= plain_g
    return out
