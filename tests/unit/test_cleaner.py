"""plan_cleanup() rules, table-driven, including the cases Nova's own tests pin."""

from __future__ import annotations

import hashlib

import pytest

from vmdisk.imagecache.cleaner import Action, CleanupPolicy, plan_cleanup
from vmdisk.imagecache.entries import Entry, EntryKind, classify

NOW = 1_800_000_000.0
SHA = hashlib.sha1(b"1").hexdigest()
SHA2 = hashlib.sha1(b"2").hexdigest()
POLICY = CleanupPolicy()


def entry(name: str, age: float = 0.0, allocated: int = 4096, regular: bool = True) -> Entry:
    return Entry(name, classify(name), NOW - age, allocated, allocated, regular)


def decide(
    name: str, age: float, in_use: set[str] | None = None, policy: CleanupPolicy = POLICY
) -> Action:
    plan = plan_cleanup([entry(name, age)], in_use or set(), {}, NOW, policy)
    return plan.decisions[0].action


def test_novas_scan_classification() -> None:
    names = [
        "00000001",
        "ephemeral_20_abcdefg",
        "00000004",
        "swap_1000",
        f"{SHA}_sm",
        f"{SHA2}_sm",
        SHA,
        SHA2,
        f"{SHA}_5368709120",
        f"{SHA}_10737418240",
    ]
    kinds = {n: classify(n) for n in names}
    assert [n for n, k in kinds.items() if k is EntryKind.ORIGINAL] == [SHA, SHA2]
    assert {n for n, k in kinds.items() if k is EntryKind.RESIZED} == {
        f"{SHA}_sm",
        f"{SHA2}_sm",
        f"{SHA}_5368709120",
        f"{SHA}_10737418240",
    }
    assert kinds["swap_1000"] is EntryKind.SWAP
    assert kinds["ephemeral_20_abcdefg"] is EntryKind.EPHEMERAL
    assert kinds["00000001"] is EntryKind.UNKNOWN and kinds["00000004"] is EntryKind.UNKNOWN


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("swap_123", EntryKind.SWAP),
        ("swap_456", EntryKind.SWAP),
        ("swap_", EntryKind.UNKNOWN),
        ("swap_abc", EntryKind.UNKNOWN),
        ("123_swap", EntryKind.UNKNOWN),
        ("swap_129_", EntryKind.UNKNOWN),
        ("ephemeral_456_40d1d2c", EntryKind.EPHEMERAL),
        ("ephemeral_", EntryKind.UNKNOWN),
        ("ephemeral_123", EntryKind.UNKNOWN),
        ("ephemeral_abc_40d1f2e", EntryKind.UNKNOWN),
        ("123_ephemeral_40e1d2d", EntryKind.UNKNOWN),
        ("ephemeral_129_", EntryKind.UNKNOWN),
        (f"{SHA}.info", EntryKind.RECORD),
        (f"{SHA}.part-0123456789ab", EntryKind.TEMPORARY),
        (f"{SHA}.info.part-0123456789ab", EntryKind.TEMPORARY),
        ("README", EntryKind.UNKNOWN),
    ],
)
def test_name_forms(name: str, kind: EntryKind) -> None:
    assert classify(name) is kind


@pytest.mark.parametrize(
    ("name", "age", "action"),
    [
        (SHA, 3601, Action.KEEP),
        (SHA, 86399, Action.KEEP),
        (SHA, 86400, Action.REMOVE),
        (SHA, 25 * 3600, Action.REMOVE),
        (f"{SHA}_10", 3599, Action.KEEP),
        (f"{SHA}_10", 3601, Action.REMOVE),
        (f"{SHA}_sm", 3601, Action.REMOVE),
        ("swap_512", 86399, Action.KEEP),
        ("swap_512", 86401, Action.REMOVE),
        ("ephemeral_20_40d1d2c", 86399, Action.KEEP),
        ("ephemeral_20_40d1d2c", 86401, Action.REMOVE),
        (f"{SHA}.part-aaaaaaaaaaaa", 3599, Action.KEEP),
        (f"{SHA}.part-aaaaaaaaaaaa", 3601, Action.REMOVE),
        ("unknown-file", 10**8, Action.IGNORE),
    ],
)
def test_age_thresholds_on_both_sides(name: str, age: float, action: Action) -> None:
    assert decide(name, age) is action


@pytest.mark.parametrize("name", [SHA, f"{SHA}_10", "swap_512", "ephemeral_20_40d1d2c"])
def test_in_use_is_touched_never_removed(name: str) -> None:
    assert decide(name, 10**9, in_use={name}) is Action.TOUCH
    tight = CleanupPolicy(max_size=0, original_min_age=0, resized_min_age=0, template_min_age=0)
    assert decide(name, 10**9, in_use={name}, policy=tight) is Action.TOUCH


def test_removal_can_be_turned_off() -> None:
    assert decide(SHA, 10**9, policy=CleanupPolicy(remove_unused=False)) is Action.KEEP
    off = CleanupPolicy(remove_unused=False, max_size=0)
    assert decide(SHA, 10**9, policy=off) is Action.KEEP


def test_records_go_only_with_their_base() -> None:
    entries = [entry(SHA, 10), entry(f"{SHA}.info", 10**6), entry(f"{SHA2}.info", 10**6)]
    plan = plan_cleanup(entries, set(), {}, NOW, POLICY)
    actions = {d.name: d.action for d in plan.decisions}
    assert actions[f"{SHA}.info"] is Action.KEEP  # its base is there
    assert actions[f"{SHA2}.info"] is Action.REMOVE  # orphaned


def test_directories_and_links_are_left_alone() -> None:
    plan = plan_cleanup([entry(SHA, 10**9, regular=False)], set(), {}, NOW, POLICY)
    assert plan.decisions[0].action is Action.IGNORE


def test_host_window() -> None:
    hosts = {"a": NOW - 23 * 3600, "b": NOW - 25 * 3600, "c": NOW}
    assert plan_cleanup([], set(), hosts, NOW, POLICY).active_hosts == ("a", "c")


def test_lru_eviction_under_a_size_cap() -> None:
    young = [
        entry(hashlib.sha1(str(i).encode()).hexdigest(), age=100 * (i + 1), allocated=10)
        for i in range(5)
    ]
    used = young[4].name  # the oldest is in use: never evicted
    plan = plan_cleanup(young, {used}, {}, NOW, CleanupPolicy(max_size=25))
    removed = {d.name for d in plan.by_action(Action.REMOVE)}
    # 50 bytes in total: evict the least recently used unused entries until <= 25;
    # the newest unused one (young[0]) survives
    assert removed == {young[3].name, young[2].name, young[1].name}
    assert all(d.evicted for d in plan.by_action(Action.REMOVE))
    assert plan.freed == 30


def test_under_the_cap_nothing_is_evicted() -> None:
    entries = [entry(SHA, 100, 10), entry(SHA2, 200, 10)]
    assert plan_cleanup(entries, set(), {}, NOW, CleanupPolicy(max_size=20)).freed == 0


def test_ten_thousand_bases() -> None:
    # Speed is measured in bench/ (P9); here only the outcome at scale.
    entries = [entry(hashlib.sha1(str(i).encode()).hexdigest(), i * 10) for i in range(10000)]
    in_use = {e.name for e in entries[::2]}
    plan = plan_cleanup(entries, in_use, {}, NOW, CleanupPolicy(max_size=10**6))
    assert len(plan.by_action(Action.TOUCH)) == 5000
    assert all(d.name not in in_use for d in plan.by_action(Action.REMOVE))
