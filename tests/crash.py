"""Crash harness: run vmdisk commands, SIGKILL them at seeded random moments, check the wreck.

After every kill: each base under its final name in `_base` matches its record (size and
sha256); every instance `vmdisk list` reports is complete (disks, disk.info, libvirt.xml,
backing files, `qemu-img check`); and the same command, run again, succeeds.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmdisk.imagecache.entries import EntryKind, scan
from vmdisk.imagecache.records import read_record
from vmdisk.imagecache.store import hash_sparse_file

VMDISK = [sys.executable, "-m", "vmdisk", "--json"]
KINDS = (
    "fetch-file-raw",
    "fetch-file-qcow2",
    "fetch-http-raw",
    "fetch-http-qcow2",
    "create-cold",
    "create-warm",
    "create-flat",
)


@dataclass
class Sources:
    raw: Path
    qcow2: Path
    http_raw: str
    http_qcow2: str


@dataclass
class Report:
    trials: int = 0
    killed: int = 0
    finished_before_kill: int = 0
    problems: list[str] = field(default_factory=list)


def command(kind: str, n: int, instances: Path, src: Sources) -> list[str]:
    base = [*VMDISK, "--instances-path", str(instances)]
    fetch = {
        "fetch-file-raw": str(src.raw),
        "fetch-file-qcow2": str(src.qcow2),
        "fetch-http-raw": src.http_raw,
        "fetch-http-qcow2": src.http_qcow2,
    }
    if kind in fetch:
        return [*base, "image", "fetch", fetch[kind], "--id", f"trial-{n}"]
    image_id = f"cold-{n}" if kind == "create-cold" else "warm"
    extra = ["--backend", "flat"] if kind == "create-flat" else []
    return [
        *base,
        "create",
        f"c{n}",
        "--image",
        str(src.qcow2),
        "--image-id",
        image_id,
        "--vcpus",
        "1",
        "--ram-mb",
        "64",
        "--root-gb",
        "1",
        "--ephemeral-gb",
        "1",
        "--swap-mb",
        "16",
        "--config-drive",
        *extra,
    ]


def check_bases(instances: Path, seen: dict[str, tuple[int, float]]) -> list[str]:
    """Every base under a final name matches its record; `seen` skips the unchanged."""
    problems = []
    base_dir = instances / "_base"
    for entry in scan(base_dir):
        if entry.kind is not EntryKind.ORIGINAL or seen.get(entry.name) == (
            entry.size,
            entry.mtime,
        ):
            continue
        path = base_dir / entry.name
        record = read_record(path)
        if record is None:
            problems.append(f"{entry.name}: a base without its record")
        elif record.size != entry.size or hash_sparse_file(path) != record.sha256:
            problems.append(f"{entry.name}: partial or altered base (sha256/size mismatch)")
        else:
            seen[entry.name] = (entry.size, entry.mtime)
    return problems


def check_instances(instances: Path, seen: set[str]) -> list[str]:
    out = subprocess.run(
        [*VMDISK, "--instances-path", str(instances), "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return [f"vmdisk list failed: {out.stdout} {out.stderr}"]
    problems = []
    for item in json.loads(out.stdout):
        if item["uuid"] in seen:  # published instances are never changed by these commands
            continue
        seen.add(item["uuid"])
        directory = Path(item["path"])
        record = json.loads((directory / "instance.json").read_text())
        formats = json.loads((directory / "disk.info").read_text())
        if not (directory / "libvirt.xml").exists():
            problems.append(f"{item['name']}: no libvirt.xml")
        for disk in record["disks"]:
            path = directory / disk["name"]
            if str(path) not in formats or not path.exists():
                problems.append(f"{item['name']}: {disk['name']} missing")
            elif formats[str(path)] == "qcow2":
                check = subprocess.run(
                    ["qemu-img", "check", "-f", "qcow2", "-U", str(path)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if check.returncode != 0:
                    problems.append(f"{item['name']}: {disk['name']}: {check.stdout.strip()}")
    return problems


def run_trials(instances: Path, src: Sources, trials: int, seed: int) -> Report:
    rng = random.Random(seed)
    report = Report()
    bases_seen: dict[str, tuple[int, float]] = {}
    instances_seen: set[str] = set()
    for n in range(trials):
        kind = KINDS[n % len(KINDS)] if n < len(KINDS) else rng.choice(KINDS)
        argv = command(kind, n, instances, src)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.05, 1.2))
        if proc.poll() is None:
            proc.kill()
            report.killed += 1
        else:
            report.finished_before_kill += 1
        proc.wait()
        report.trials += 1
        problems = check_bases(instances, bases_seen) + check_instances(instances, instances_seen)
        again = subprocess.run(argv, capture_output=True, text=True, check=False)
        # A create killed after its rename has published a complete instance (checked above):
        # running it again rightly says the name exists.
        exists = kind.startswith("create") and '"InstanceExists"' in again.stdout
        if again.returncode != 0 and not exists:
            problems.append(f"rerun of {kind} failed: {again.stdout.strip()[-300:]}")
        report.problems += [f"trial {n} ({kind}): {p}" for p in problems]
    return report
