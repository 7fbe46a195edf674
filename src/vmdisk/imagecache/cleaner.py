"""Pruning `_base`: plan_cleanup() decides (pure), apply_cleanup() acts under the entry locks.

The race that matters is a create using a base at the moment the cleaner decides it is unused.
The protocol (README, "When is a base removed"):

1. Creators reserve `.building-<uuid>` naming the bases they will use *before* fetching, hold
   each base's lock shared while they make overlays, and touch the base first and last.
2. The cleaner notes T0, then lists `_base` and everything that references it: instance
   records, qcow2 backing files read from the headers, and the bases named by live builds.
3. For each entry it would remove, it takes the entry's lock exclusively (waiting for creators
   to finish) and re-checks that the file still exists, is still old enough and was not touched
   at or after T0. Only then are the base, its record and its lock file removed.

Any use that started before T0 is in the listing; any use that started after it touched the
base after T0. Either way the base stays.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from vmdisk.errors import VmdiskError
from vmdisk.fsutil import touch
from vmdisk.imagecache.entries import Entry, EntryKind
from vmdisk.imagecache.records import RECORD_SUFFIX
from vmdisk.locks import Locks

HOST_WINDOW = 24 * 3600


class Action(StrEnum):
    KEEP = "keep"
    TOUCH = "touch"  # in use: keep, and mark used now
    REMOVE = "remove"
    IGNORE = "ignore"  # not ours to decide (unknown files), reported


@dataclass(frozen=True, slots=True)
class CleanupPolicy:
    remove_unused: bool = True
    original_min_age: int = 86400
    resized_min_age: int = 3600
    template_min_age: int = 86400
    temporary_min_age: int = 3600
    max_size: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    name: str
    kind: EntryKind
    action: Action
    reason: str
    age: float
    allocated: int
    mtime: float
    evicted: bool = False  # removed for the size cap, not for age

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": str(self.kind),
            "action": str(self.action),
            "reason": self.reason,
            "age_seconds": round(self.age),
            "allocated": self.allocated,
            "evicted": self.evicted,
        }


@dataclass(frozen=True, slots=True)
class CleanupPlan:
    decisions: tuple[Decision, ...]
    now: float
    total_allocated: int
    active_hosts: tuple[str, ...] = ()
    links: Mapping[str, str] = field(default_factory=dict)  # hard-linked name -> inode key

    def by_action(self, action: Action) -> list[Decision]:
        return [d for d in self.decisions if d.action is action]

    @property
    def freed(self) -> int:
        """Bytes the removals free: a hard-linked inode only when all its names go."""
        return _freed(self.decisions, {d.name for d in self.by_action(Action.REMOVE)}, self.links)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entries": [d.to_dict() for d in self.decisions],
            "total_allocated": self.total_allocated,
            "would_free": self.freed,
            "active_hosts": list(self.active_hosts),
        }


def _min_age(kind: EntryKind, policy: CleanupPolicy) -> int | None:
    return {
        EntryKind.ORIGINAL: policy.original_min_age,
        EntryKind.RESIZED: policy.resized_min_age,
        EntryKind.SWAP: policy.template_min_age,
        EntryKind.EPHEMERAL: policy.template_min_age,
    }.get(kind)


def _decide(
    entry: Entry, in_use: Set[str], present: Set[str], now: float, policy: CleanupPolicy
) -> Decision:
    age = max(0.0, now - entry.mtime)

    def make(action: Action, reason: str) -> Decision:
        return Decision(entry.name, entry.kind, action, reason, age, entry.allocated, entry.mtime)

    if entry.kind is EntryKind.UNKNOWN or not entry.regular:
        return make(Action.IGNORE, "not a file vmdisk makes; left alone")
    if entry.kind is EntryKind.TEMPORARY:
        if age >= policy.temporary_min_age:
            return make(Action.REMOVE, f"leftover temporary, {age / 3600:.1f} h old")
        return make(Action.KEEP, "temporary file of a fetch that may still run")
    if entry.kind is EntryKind.RECORD:
        base = entry.name[: -len(RECORD_SUFFIX)]
        if base not in present and age >= policy.temporary_min_age:
            return make(Action.REMOVE, "record of a base that is gone")
        return make(Action.KEEP, "record of its base")
    if entry.name in in_use:
        return make(Action.TOUCH, "in use")
    min_age = _min_age(entry.kind, policy)
    if min_age is None or not policy.remove_unused:
        return make(Action.KEEP, "unused; removal is turned off")
    if age >= min_age:
        return make(Action.REMOVE, f"unused for {age / 3600:.1f} h (limit {min_age / 3600:g} h)")
    return make(Action.KEEP, f"unused, but only {age / 3600:.1f} h old")


def plan_cleanup(
    entries: Sequence[Entry],
    in_use: Set[str],
    hosts: Mapping[str, float],
    now: float,
    policy: CleanupPolicy,
    links: Mapping[str, str] | None = None,
) -> CleanupPlan:
    """Decide for every entry; then evict unused entries LRU-first while over max_size.

    In-use is decided per name; `links` (name -> inode key of hard-linked bases, see
    imagecache/dedup.py) only changes the byte counts: an inode is freed with its last name.
    """
    links = dict(links or {})
    present = {e.name for e in entries}
    decisions = [_decide(e, in_use, present, now, policy) for e in entries]
    total = _total(entries, links)
    if policy.max_size is not None and policy.remove_unused:
        decisions = _evict(decisions, total, policy.max_size, links)
    active = tuple(sorted(h for h, seen in hosts.items() if now - seen <= HOST_WINDOW))
    return CleanupPlan(tuple(decisions), now, total, active, links)


def _total(entries: Sequence[Entry], links: Mapping[str, str]) -> int:
    """Allocated bytes of the regular entries, each hard-linked inode once."""
    total, seen = 0, set()
    for e in entries:
        key = links.get(e.name)
        if not e.regular or key in seen:
            continue
        if key is not None:
            seen.add(key)
        total += e.allocated
    return total


def _freed(decisions: Sequence[Decision], removed: Set[str], links: Mapping[str, str]) -> int:
    """Allocated bytes of `removed`, each hard-linked inode counted once, and only when
    every one of its names is removed."""
    groups: dict[str, set[str]] = {}
    for d in decisions:
        if d.name in links:
            groups.setdefault(links[d.name], set()).add(d.name)
    total, counted = 0, set()
    for d in decisions:
        if d.name not in removed:
            continue
        key = links.get(d.name)
        if key is None:
            total += d.allocated
        elif key not in counted and groups[key] <= removed:
            counted.add(key)
            total += d.allocated
    return total


_EVICTABLE = (EntryKind.ORIGINAL, EntryKind.RESIZED, EntryKind.SWAP, EntryKind.EPHEMERAL)


def _evict(
    decisions: list[Decision], total: int, max_size: int, links: Mapping[str, str]
) -> list[Decision]:
    removed = {d.name for d in decisions if d.action is Action.REMOVE}
    remaining = total - _freed(decisions, removed, links)
    if remaining <= max_size:
        return decisions
    candidates = sorted(
        (d for d in decisions if d.action is Action.KEEP and d.kind in _EVICTABLE),
        key=lambda d: d.mtime,
    )
    evict: set[str] = set()
    for d in candidates:
        if remaining <= max_size:
            break
        evict.add(d.name)
        remaining = total - _freed(decisions, removed | evict, links)
    return [
        Decision(
            d.name,
            d.kind,
            Action.REMOVE,
            "least recently used while the cache is over max_size",
            d.age,
            d.allocated,
            d.mtime,
            evicted=True,
        )
        if d.name in evict
        else d
        for d in decisions
    ]


@dataclass
class CleanupResult:
    removed: list[str] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)
    kept_on_recheck: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": self.removed,
            "touched": self.touched,
            "kept_on_recheck": self.kept_on_recheck,
            "errors": self.errors,
        }


def apply_cleanup(
    plan: CleanupPlan,
    base_dir: Path,
    locks: Locks,
    started: float,
    policy: CleanupPolicy,
    lock_timeout: float = 60.0,
) -> CleanupResult:
    """Carry out the plan; one entry's failure is reported and the pass goes on."""
    result = CleanupResult()
    for d in plan.decisions:
        try:
            if d.action is Action.TOUCH:
                touch(base_dir / d.name)
                result.touched.append(d.name)
            elif d.action is Action.REMOVE:
                _remove(d, base_dir, locks, started, policy, lock_timeout, result)
        except (OSError, ValueError, VmdiskError) as exc:
            # Never die on one file: a name we do not understand is reported, not fatal.
            result.errors[d.name] = str(exc)
    return result


def _lock_name(d: Decision) -> str:
    if d.kind is EntryKind.TEMPORARY:
        owner = d.name.split(".", 1)[0]  # the entry whose fetch wrote it
        return owner or f"probe{d.name}"  # probes (.directio.test.*) belong to no entry
    if d.kind is EntryKind.RECORD:
        return d.name[: -len(RECORD_SUFFIX)]
    return d.name


def _remove(
    d: Decision,
    base_dir: Path,
    locks: Locks,
    started: float,
    policy: CleanupPolicy,
    timeout: float,
    result: CleanupResult,
) -> None:
    path = base_dir / d.name
    name = _lock_name(d)
    if d.kind is EntryKind.TEMPORARY:
        # A temporary whose entry is locked belongs to a fetch in progress, however old.
        with locks.try_exclusive(name) as free:
            if free and _still_removable(path, d, started, policy):
                path.unlink()
                result.removed.append(d.name)
                if not (base_dir / name).exists():
                    locks.remove(name)  # ours; the entry it belonged to is gone
            else:
                result.kept_on_recheck.append(d.name)
        return
    with locks.exclusive(name, timeout=timeout):
        if not _still_removable(path, d, started, policy):
            result.kept_on_recheck.append(d.name)
            return
        path.unlink()
        with contextlib.suppress(FileNotFoundError):
            (base_dir / (d.name + RECORD_SUFFIX)).unlink()
        result.removed.append(d.name)
        if d.kind in (EntryKind.ORIGINAL, EntryKind.RESIZED):
            locks.remove(name)  # held by us: nobody waits on the old inode


def _still_removable(path: Path, d: Decision, started: float, policy: CleanupPolicy) -> bool:
    """Inside the lock: still there, not touched since the pass began, still old enough."""
    try:
        mtime = path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if mtime >= started:
        return False
    if d.evicted:
        return True
    min_age = _min_age(d.kind, policy)
    if d.kind in (EntryKind.TEMPORARY, EntryKind.RECORD):
        min_age = policy.temporary_min_age
    return min_age is not None and started - mtime >= min_age


def read_hosts(path: Path) -> dict[str, float]:
    """Nova's compute_nodes registry: {"host": epoch seconds}."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}


def register_host(
    path: Path, locks: Locks, host: str, now: float, write: Callable[[Path, bytes], None]
) -> dict[str, float]:
    with locks.exclusive("storage-registry-lock"):
        hosts = read_hosts(path)
        hosts[host] = now
        write(path, json.dumps(hosts, sort_keys=True).encode())
    return hosts


def hostname() -> str:
    return os.uname().nodename
