"""`vmdisk doctor [--fix]`: every leftover a crash can leave is found and removed, and nothing
in use is touched: planted leftovers beside live locks, and a real create SIGKILLed mid-fetch."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.httpserver import Route, serve
from tests.images import MiB
from vmdisk.imagecache.records import cache_name
from vmdisk.locks import Locks

VMDISK = [sys.executable, "-m", "vmdisk", "--json"]
HOUR_AGO = time.time() - 7200


def vmdisk(inst: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, object]:
    result = subprocess.run(
        [*VMDISK, "--instances-path", str(inst), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


@contextlib.contextmanager
def held(locks: Locks, name: str) -> Iterator[None]:
    """A live process's lock: flock on our own open file, as another create would hold it."""
    with locks.exclusive(name):
        yield


def plant(path: Path, *, old: bool = True, directory: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        path.mkdir()
        (path / "disk").write_bytes(b"half-made")
    else:
        path.write_bytes(b"")
    if old:
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    return path


def test_planted_leftovers_are_found_and_only_they_are_removed(tmp_path: Path) -> None:
    inst = tmp_path / "inst"
    image = tmp_path / "root.raw"
    image.write_bytes(os.urandom(MiB))
    code, created = vmdisk(inst, "create", "web", "--image", str(image), "--flavor", "m1.tiny")
    assert code == 0, created
    assert isinstance(created, dict)
    base = Path(created["disks"][0]["backing_file"]).name
    locks = Locks(inst / "locks")

    dead, live = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    gone_entry, busy_entry, dead_fetch = (cache_name(n) for n in ("gone", "busy", "dead"))
    leftovers = {
        plant(inst / f".building-{dead}", directory=True): "build-dir",
        plant(inst / f".deleting-{uuidlib.uuid4()}-0a1b2c3d", directory=True): "deleting-dir",
        inst / ".names" / "ghost": "stale-name",
        plant(inst / "locks" / f"vmdisk-{gone_entry}"): "stale-lock",
        plant(inst / "locks" / f"vmdisk-build-{dead}"): "build-dir",  # goes with its directory
        plant(inst / "_base" / f"{dead_fetch}.part-1a2b3c4d"): "temporary",
        plant(inst / "_base" / ".directio.test.9f8e7d6c"): "temporary",
    }
    (inst / ".names" / "ghost").write_text(str(uuidlib.uuid4()))
    in_use = [
        plant(inst / f".building-{live}", directory=True),  # its create holds the build lock
        plant(inst / "_base" / f"{cache_name('fresh')}.part-5e6f7a8b", old=False),  # too young
        plant(inst / "_base" / f"{busy_entry}.part-9a8b7c6d"),  # its fetch holds the lock
        inst / "locks" / f"vmdisk-{busy_entry}",
        inst / "locks" / f"vmdisk-{base}",  # the lock of a base that exists
        inst / "locks" / "vmdisk-instance-names",
        inst / ".names" / "web",
        inst / "_base" / base,
        Path(created["path"]) / "disk",
    ]
    unknown = plant(inst / "locks" / "README")

    with held(locks, f"build-{live}"), held(locks, busy_entry):
        code, report = vmdisk(inst, "doctor")
        assert code == 0 and isinstance(report, dict) and report["clean"] is False
        kinds = {Path(f["path"]): f["kind"] for f in report["findings"]}
        expected = {p: k for p, k in leftovers.items() if p.name != f"vmdisk-build-{dead}"}
        assert kinds == {**expected, unknown: "unknown"}
        assert all(p.exists() for p in [*leftovers, *in_use]), "a report removed something"

        code, report = vmdisk(inst, "doctor", "--fix")
        assert code == 0 and isinstance(report, dict) and report["clean"] is True
        assert {Path(f["path"]) for f in report["findings"] if f["removed"]} == set(expected)

    assert [p for p in leftovers if os.path.lexists(p)] == []
    assert [p for p in in_use if not p.exists()] == [] and unknown.exists()
    check = subprocess.run(
        ["qemu-img", "check", "-f", "qcow2", str(Path(created["path"]) / "disk")], check=False
    )
    assert check.returncode == 0
    # Once their holders are gone, what they held is a leftover like any other.
    _, again = vmdisk(inst, "doctor")
    assert isinstance(again, dict)
    assert {Path(f["path"]) for f in again["findings"]} == {in_use[0], in_use[2], unknown}


def test_doctor_after_sigkill_of_a_real_create(tmp_path: Path) -> None:
    """A create killed while it downloads leaves its build directory, name entry, build lock,
    entry lock and .part file; doctor --fix removes all of them and the create then works."""
    inst = tmp_path / "inst"
    body = os.urandom(4 * MiB)
    env = {"VMDISK_IMAGE_CACHE__REMOVE_TEMPORARY_MINIMUM_AGE_SECONDS": "0"}
    with serve({"/slow.raw": Route(body, rate=MiB)}) as srv:
        argv = [
            *VMDISK,
            "--instances-path",
            str(inst),
            "create",
            "c",
            "--image",
            srv.url("/slow.raw"),
            "--format",
            "raw",
            "--flavor",
            "m1.tiny",
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not list((inst / "_base").glob("*.part-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # well inside the 4 s download
        proc.kill()
        proc.wait()
        assert list((inst / "_base").glob("*.part-*")), "the create was not killed mid-fetch"

        code, report = vmdisk(inst, "doctor", env=env)
        assert code == 0 and isinstance(report, dict)
        kinds = sorted(f["kind"] for f in report["findings"])
        assert kinds == ["build-dir", "stale-name", "temporary"], report  # the lock goes with it

        code, report = vmdisk(inst, "doctor", "--fix", env=env)
        assert isinstance(report, dict) and report["clean"] is True
        assert sorted(p.name for p in (inst / "locks").iterdir()) == ["vmdisk-instance-names"]
        assert list((inst / "_base").iterdir()) == []
        assert [p.name for p in inst.iterdir() if p.name.startswith(".building-")] == []
        assert list((inst / ".names").iterdir()) == []

        code, created = vmdisk(inst, *argv[len(VMDISK) + 2 :])
        assert code == 0, created
    _, again = vmdisk(inst, "doctor", env=env)
    assert isinstance(again, dict) and again["clean"] is True and again["findings"] == []


@pytest.mark.parametrize("fix", [False, True])
def test_doctor_on_an_empty_host(tmp_path: Path, fix: bool) -> None:
    code, report = vmdisk(tmp_path / "new", "doctor", *(["--fix"] if fix else []))
    assert code == 0 and report == {"clean": True, "findings": [], "fix": fix}
