"""Concurrency soak (`make soak`, not the default suite): creates and deletes of three images
racing a pruner that loops with every age forced to 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.httpserver import Route, serve
from tests.images import MiB, run
from vmdisk.imagecache.records import cache_name

ROUNDS = int(os.environ.get("SOAK_ROUNDS", "12"))
WORKERS = 4
VMDISK = [sys.executable, "-m", "vmdisk", "--json"]


def worker_script(instances: Path, urls: list[str], worker: int) -> str:
    lines = []
    for i in range(ROUNDS):
        url = urls[(worker + i) % len(urls)]
        name = f"w{worker}r{i}"
        lines.append(
            f"{' '.join(VMDISK)} --instances-path {instances} create {name} "
            f"--image {url} --vcpus 1 --ram-mb 64 --root-gb 1 --swap-mb 8 "
            f"--ephemeral-gb 1 >{instances.parent}/{name}.out 2>&1 "
            f"|| {{ echo failed {name} >&2; exit 1; }}"
        )
        if i % 3 != 2:  # keep every third instance, delete the others
            lines.append(
                f"{' '.join(VMDISK)} --instances-path {instances} delete {name} "
                ">/dev/null || exit 1"
            )
    return "\n".join(lines)


def test_creates_deletes_and_prunes_race(tmp_path: Path) -> None:
    instances = tmp_path / "instances"
    bodies = {f"/img{i}": bytes([i + 1]) * MiB + bytes(7 * MiB) for i in range(3)}
    cfg = tmp_path / "zero-ages.toml"
    cfg.write_text(
        f'instances_path = "{instances}"\n[image_cache]\n'
        + "".join(
            f"{k} = 0\n"
            for k in (
                "remove_unused_original_minimum_age_seconds",
                "remove_unused_resized_minimum_age_seconds",
                "remove_unused_template_minimum_age_seconds",
                "remove_temporary_minimum_age_seconds",
            )
        )
    )
    log = tmp_path / "prune.jsonl"
    with serve({p: Route(b) for p, b in bodies.items()}) as srv:
        urls = [srv.url(p) for p in bodies]
        pruner = subprocess.Popen(
            [
                "sh",
                "-c",
                f"while true; do {' '.join(VMDISK)} --config "
                f"{cfg} cache prune | tr -d '\\n' >> {log}; echo >> {log}; "
                "done",
            ]
        )
        try:
            workers = [
                subprocess.Popen(
                    ["sh", "-c", worker_script(instances, urls, w)], stderr=subprocess.PIPE
                )
                for w in range(WORKERS)
            ]
            errors = [w.communicate(timeout=1800)[1] for w in workers]
        finally:
            pruner.terminate()
            pruner.wait()
        hits = dict(srv.hits)
    assert [w.returncode for w in workers] == [0] * WORKERS, errors
    removed: dict[str, int] = {}
    for line in log.read_text().splitlines():
        if line.strip().startswith("{"):
            with_result = json.loads(line).get("result") or {}
            for name in with_result.get("removed", []):
                removed[name] = removed.get(name, 0) + 1
    assert sum(removed.values()) > 0, "the pruner must really have removed bases mid-run"
    for path, url in zip(bodies, urls, strict=True):
        name = cache_name(url)
        present = (instances / "_base" / name).exists()
        assert hits.get(path, 0) == removed.get(name, 0) + int(present), (path, hits, removed)
    listed = json.loads(
        subprocess.run(
            [*VMDISK, "--instances-path", str(instances), "list"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert len(listed) == WORKERS * (ROUNDS // 3)
    for item in listed:
        for disk in ("disk", "disk.local", "disk.swap"):
            run("qemu-img", "check", "-f", "qcow2", Path(item["path"]) / disk)
