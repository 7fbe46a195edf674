"""apply_cleanup() on a real tmp `_base`: ages set with os.utime, locks held in-process."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from vmdisk.fsutil import write_atomic
from vmdisk.imagecache.cleaner import (
    Action,
    CleanupPolicy,
    CleanupResult,
    apply_cleanup,
    hostname,
    plan_cleanup,
    read_hosts,
    register_host,
)
from vmdisk.imagecache.entries import Entry, classify
from vmdisk.locks import Locks

SHA = hashlib.sha1(b"old").hexdigest()
SHA2 = hashlib.sha1(b"new").hexdigest()
DAY = 86400.0
POLICY = CleanupPolicy()


def put(base: Path, name: str, age: float, now: float, data: bytes = b"x") -> None:
    (base / name).write_bytes(data)
    os.utime(base / name, (now - age, now - age))


def entries(base: Path) -> list[Entry]:
    out = []
    for path in sorted(base.iterdir()):
        st = path.lstat()
        out.append(Entry(path.name, classify(path.name), st.st_mtime, 4096, st.st_size, True))
    return out


def run(
    base: Path, locks: Locks, in_use: set[str], now: float, policy: CleanupPolicy = POLICY
) -> CleanupResult:
    plan = plan_cleanup(entries(base), in_use, {}, now, policy)
    return apply_cleanup(plan, base, locks, now, policy, lock_timeout=0.05)


def test_old_unused_base_and_its_record_go_used_base_is_touched(tmp_path: Path) -> None:
    base = tmp_path / "_base"
    base.mkdir()
    locks = Locks(tmp_path / "locks")
    now = time.time()
    put(base, SHA, 2 * DAY, now)
    put(base, SHA + ".info", 2 * DAY, now, b"{}")
    put(base, SHA2, 2 * DAY, now)
    put(base, "swap_512", 2 * DAY, now)
    put(base, "notes.txt", 9 * DAY, now)
    with locks.exclusive(SHA):
        pass  # a lock file exists and is removed with its base
    result = run(base, locks, {SHA2}, now)
    assert sorted(result.removed) == sorted([SHA, "swap_512"])
    assert result.touched == [SHA2]
    assert result.errors == {} and result.kept_on_recheck == []
    assert sorted(p.name for p in base.iterdir()) == sorted([SHA2, "notes.txt"])
    assert (base / SHA2).stat().st_mtime >= now - 1
    assert not locks.path(SHA).exists()
    assert result.to_dict()["touched"] == [SHA2]


def test_a_base_touched_after_the_pass_began_is_kept(tmp_path: Path) -> None:
    base = tmp_path / "_base"
    base.mkdir()
    locks = Locks(tmp_path / "locks")
    now = time.time()
    put(base, SHA, 2 * DAY, now)
    plan = plan_cleanup(entries(base), set(), {}, now, POLICY)
    assert plan.by_action(Action.REMOVE)[0].name == SHA
    os.utime(base / SHA, (now + 5, now + 5))  # a create used it meanwhile
    result = apply_cleanup(plan, base, locks, now, POLICY)
    assert result.removed == [] and result.kept_on_recheck == [SHA]
    assert (base / SHA).exists()


def test_a_base_gone_before_the_recheck_is_kept_on_recheck(tmp_path: Path) -> None:
    base = tmp_path / "_base"
    base.mkdir()
    now = time.time()
    put(base, SHA, 2 * DAY, now)
    plan = plan_cleanup(entries(base), set(), {}, now, POLICY)
    (base / SHA).unlink()
    result = apply_cleanup(plan, base, Locks(tmp_path / "locks"), now, POLICY)
    assert result.kept_on_recheck == [SHA]


def test_a_locked_base_is_reported_not_removed(tmp_path: Path) -> None:
    base = tmp_path / "_base"
    base.mkdir()
    locks = Locks(tmp_path / "locks")
    now = time.time()
    put(base, SHA, 2 * DAY, now)
    with locks.shared(SHA):  # a create is making an overlay on it
        result = run(base, locks, set(), now)
    assert result.removed == []
    assert "timed out waiting for lock" in result.errors[SHA]
    assert (base / SHA).exists()


def test_leftover_temporary_goes_unless_its_fetch_holds_the_lock(tmp_path: Path) -> None:
    base = tmp_path / "_base"
    base.mkdir()
    locks = Locks(tmp_path / "locks")
    now = time.time()
    old_tmp = f"{SHA}.part-abc123"
    busy_tmp = f"{SHA2}.part-def456"
    put(base, old_tmp, 2 * 3600, now)
    put(base, busy_tmp, 2 * 3600, now)
    with locks.exclusive(SHA):
        pass
    with locks.exclusive(SHA2):  # the fetch of SHA2 still runs
        result = run(base, locks, set(), now)
    assert result.removed == [old_tmp]
    assert result.kept_on_recheck == [busy_tmp]
    assert not locks.path(SHA).exists()  # its entry is gone, so is its lock
    assert (base / busy_tmp).exists()


def test_an_evicted_base_goes_even_if_young(tmp_path: Path) -> None:
    base = tmp_path / "_base"
    base.mkdir()
    locks = Locks(tmp_path / "locks")
    now = time.time()
    put(base, SHA, 300, now)
    put(base, SHA2, 200, now)
    policy = CleanupPolicy(max_size=4096)
    result = run(base, locks, set(), now, policy)
    assert result.removed == [SHA]  # least recently used first, until under the cap
    assert (base / SHA2).exists()


def test_host_registry_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "compute_nodes"
    assert read_hosts(path) == {}
    locks = Locks(tmp_path / "locks")
    register_host(path, locks, "a", 100.0, write_atomic)
    hosts = register_host(path, locks, "b", 200.0, write_atomic)
    assert hosts == {"a": 100.0, "b": 200.0}
    assert json.loads(path.read_text()) == {"a": 100.0, "b": 200.0}
    path.write_text('{"a": 1, "bad": "x"}')
    assert read_hosts(path) == {"a": 1.0}
    path.write_text("not json")
    assert read_hosts(path) == {}
    assert hostname() == os.uname().nodename
