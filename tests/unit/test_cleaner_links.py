"""plan_cleanup() with hard-linked bases (content dedup): in use per name, bytes per inode."""

from __future__ import annotations

import hashlib

from vmdisk.imagecache.cleaner import Action, CleanupPolicy, plan_cleanup
from vmdisk.imagecache.entries import Entry, classify

NOW = 1_800_000_000.0
DAY = 86400.0
A, B, C = (hashlib.sha1(x).hexdigest() for x in (b"a", b"b", b"c"))
MB = 1 << 20


def entry(name: str, age: float, allocated: int) -> Entry:
    return Entry(name, classify(name), NOW - age, allocated, allocated, True)


def test_linked_names_count_once_and_free_only_together() -> None:
    entries = [entry(A, 2 * DAY, 10 * MB), entry(B, 2 * DAY, 10 * MB), entry(C, 2 * DAY, MB)]
    links = {A: "1:7", B: "1:7"}
    plan = plan_cleanup(entries, {B}, {}, NOW, CleanupPolicy(), links)
    actions = {d.name: d.action for d in plan.decisions}
    assert actions == {A: Action.REMOVE, B: Action.TOUCH, C: Action.REMOVE}
    assert plan.total_allocated == 11 * MB
    assert plan.freed == MB  # A's blocks stay: B still names them


def test_size_cap_evicts_both_names_of_an_inode_to_free_it() -> None:
    entries = [entry(A, 10, 10 * MB), entry(B, 20, 10 * MB), entry(C, 5, 4 * MB)]
    links = {A: "1:7", B: "1:7"}
    policy = CleanupPolicy(max_size=5 * MB)
    plan = plan_cleanup(entries, set(), {}, NOW, policy, links)
    removed = {d.name for d in plan.by_action(Action.REMOVE)}
    assert removed == {A, B} and plan.freed == 10 * MB


def test_without_links_every_name_is_its_own_bytes() -> None:
    entries = [entry(A, 2 * DAY, 10 * MB), entry(B, 2 * DAY, 10 * MB)]
    plan = plan_cleanup(entries, set(), {}, NOW, CleanupPolicy())
    assert plan.total_allocated == 20 * MB and plan.freed == 20 * MB
