"""flock-based locks in one process: threads and second descriptors stand in for processes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from vmdisk.errors import LockTimeout
from vmdisk.locks import Locks


def test_lock_files_are_named_like_novas(tmp_path: Path) -> None:
    locks = Locks(tmp_path / "locks")
    assert locks.path("abc") == tmp_path / "locks" / "vmdisk-abc"
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(ValueError, match="bad lock name"):
            locks.path(bad)


def test_exclusive_creates_the_directory_and_excludes_try(tmp_path: Path) -> None:
    locks = Locks(tmp_path / "locks")
    with locks.exclusive("base"):
        assert (tmp_path / "locks" / "vmdisk-base").exists()
        with locks.try_exclusive("base") as taken:
            assert taken is False
    with locks.try_exclusive("base") as taken:
        assert taken is True


def test_shared_locks_coexist_and_exclude_an_exclusive(tmp_path: Path) -> None:
    locks = Locks(tmp_path)
    with locks.shared("b"), locks.shared("b", timeout=0.05):
        with (
            pytest.raises(LockTimeout, match="timed out waiting for lock 'b'"),
            locks.exclusive("b", timeout=0.05),
        ):
            pass
        with locks.try_exclusive("b") as taken:
            assert not taken


def test_exclusive_times_out_with_the_default_timeout(tmp_path: Path) -> None:
    locks = Locks(tmp_path, timeout=0.05)
    with locks.exclusive("x"):
        start = time.monotonic()
        with pytest.raises(LockTimeout) as err, locks.shared("x"):
            pass
        assert time.monotonic() - start >= 0.05
        assert err.value.hint is not None and "another vmdisk process" in err.value.hint


def test_a_waiter_gets_the_lock_when_the_holder_releases(tmp_path: Path) -> None:
    locks = Locks(tmp_path)
    order: list[str] = []
    held = threading.Event()

    def holder() -> None:
        with locks.exclusive("x"):
            held.set()
            time.sleep(0.1)
            order.append("holder done")

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    with locks.exclusive("x", timeout=5):
        order.append("waiter in")
    thread.join()
    assert order == ["holder done", "waiter in"]


def test_a_lock_file_removed_while_waiting_is_taken_again(tmp_path: Path) -> None:
    locks = Locks(tmp_path)
    held = threading.Event()
    got = threading.Event()

    def cleaner() -> None:
        with locks.exclusive("x"):
            held.set()
            time.sleep(0.1)
            locks.remove("x")

    thread = threading.Thread(target=cleaner)
    thread.start()
    held.wait(5)
    with locks.exclusive("x", timeout=5):
        got.set()
        # the waiter holds the recreated file, not the unlinked inode
        with locks.try_exclusive("x") as taken:
            assert not taken
    thread.join()
    assert got.is_set()


def test_remove_of_a_missing_lock_is_quiet(tmp_path: Path) -> None:
    locks = Locks(tmp_path)
    locks.remove("never")
    with locks.exclusive("y"):
        locks.remove("y")
    assert not locks.path("y").exists()
