"""`vmdisk doctor`: find (and with fix=True remove) what crashed processes left behind.

Each leftover is decided under the lock its owner would hold, so nothing in use is touched:
a `.building-<uuid>` directory only when its build lock is free, a name entry only under the
names lock when its instance neither exists nor is being built, an entry's lock file only while
we hold it and nothing of that entry is in `_base`, a temporary in `_base` only when older than
the cleaner's `remove_temporary_minimum_age_seconds` and its entry's lock is free.
`.deleting-*` directories are instances already renamed out of sight by a delete that died.
Names it does not understand are reported and never removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vmdisk.imagecache.entries import EntryKind, scan
from vmdisk.instances import BUILDING, DELETING, NAMES_DIR, NAMES_LOCK, InstanceStore
from vmdisk.locks import PREFIX, Locks
from vmdisk.model import NAME_RE

#: Lock files vmdisk keeps on purpose, whatever else exists.
PERMANENT_LOCKS = frozenset({NAMES_LOCK, "storage-registry-lock"})
_ENTRY = re.compile(r"[0-9a-f]{40}(?:_[0-9]+|_sm)?|swap_[0-9]+|ephemeral_[0-9]+_[0-9A-Za-z]{7}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class Finding:
    """One leftover: what it is, where, why it is (or is not) safe to remove, and if it went."""

    kind: str  # build-dir, deleting-dir, stale-name, stale-lock, temporary, unknown
    path: Path
    detail: str
    removable: bool = True  # False: reported only (vmdisk does not know what it is)
    removed: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "detail": self.detail,
            "removable": self.removable,
            "removed": self.removed,
        }


@dataclass(frozen=True, slots=True)
class Doctor:
    store: InstanceStore
    locks: Locks
    base_dir: Path
    temporary_age: float  # [image_cache] remove_temporary_minimum_age_seconds

    def run(self, *, fix: bool) -> list[Finding]:
        """Every check in turn; with fix, each finding is removed as it is confirmed."""
        found: list[Finding] = []
        for check in (self._builds, self._deleting, self._names, self._temporaries, self._locks):
            found.extend(check(fix))
        return found

    def _builds(self, fix: bool) -> Iterator[Finding]:
        for entry in _scandir(self.store.root):
            if not entry.name.startswith(BUILDING):
                continue
            uuid = entry.name[len(BUILDING) :]
            if not _UUID.fullmatch(uuid):
                continue
            with self._free(f"build-{uuid}", fix) as free:
                if not free:
                    continue  # a create is working in it
                if fix:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    self.locks.remove(f"build-{uuid}")  # held by us
                detail = "build directory of a create that died"
                yield Finding("build-dir", Path(entry.path), detail, True, fix)

    def _deleting(self, fix: bool) -> Iterator[Finding]:
        for entry in _scandir(self.store.root):
            if entry.name.startswith(DELETING) and entry.is_dir(follow_symlinks=False):
                if fix:
                    shutil.rmtree(entry.path, ignore_errors=True)
                detail = "instance a delete renamed away but did not finish removing"
                yield Finding("deleting-dir", Path(entry.path), detail, True, fix)

    def _names(self, fix: bool) -> Iterator[Finding]:
        names = self.store.root / NAMES_DIR
        if names.is_symlink() or not names.is_dir():
            return
        with self.locks.exclusive(NAMES_LOCK):
            for entry in _scandir(names):
                if entry.is_symlink() or not NAME_RE.fullmatch(entry.name):
                    continue
                owner = self.store.name_owner(entry.name)
                if owner is not None and self.store.alive(owner):
                    continue
                if fix:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                detail = f"name entry for instance {owner or '(empty)'}, which does not exist"
                yield Finding("stale-name", Path(entry.path), detail, True, fix)

    def _temporaries(self, fix: bool) -> Iterator[Finding]:
        now = time.time()
        for e in scan(self.base_dir):
            if e.kind is not EntryKind.TEMPORARY or now - e.mtime < self.temporary_age:
                continue
            owner = e.name.split(".", 1)[0] or f"probe{e.name}"  # as the cleaner names it
            path = self.base_dir / e.name
            with self._free(owner, fix) as free:
                if not free:
                    continue  # a fetch of that entry is running
                if fix:
                    with contextlib.suppress(FileNotFoundError):
                        _remove(path)
                    if not any(_entry_files(self.base_dir, owner)):
                        self.locks.remove(owner)  # held by us, and its entry is gone
                age = int(now - e.mtime)
                yield Finding(
                    "temporary", path, f"left by a fetch that died, {age} s old", True, fix
                )

    def _locks(self, fix: bool) -> Iterator[Finding]:
        for entry in _scandir(self.locks.directory):
            if not entry.name.startswith(PREFIX) or not entry.is_file(follow_symlinks=False):
                yield Finding("unknown", Path(entry.path), "not a vmdisk lock file", False)
                continue
            name = entry.name[len(PREFIX) :]
            gone = None if name in PERMANENT_LOCKS else self._owner_gone(name)
            if gone is None or not gone():
                continue  # kept on purpose, a backend's own, or its entry/build exists
            with self._free(name, fix) as free:
                if not free or not gone():  # held, or its owner appeared meanwhile
                    continue
                if fix:
                    self.locks.remove(name)  # held by us: a waiter re-opens the new file
                detail = "lock of an entry or build that no longer exists"
                yield Finding("stale-lock", Path(entry.path), detail, True, fix)

    def _free(self, name: str, fix: bool) -> contextlib.AbstractContextManager[bool]:
        """Whether nobody holds lock `name`: held by us while fixing, only peeked at in a report
        (which must not create lock files as a side effect)."""
        return self.locks.try_exclusive(name) if fix else _peek(self.locks.path(name))

    def _owner_gone(self, name: str) -> Callable[[], bool] | None:
        """How to tell that what a lock protects is gone; None for names we do not know."""
        if name.startswith("build-") and _UUID.fullmatch(name[len("build-") :]):
            build = self.store.root / f"{BUILDING}{name[len('build-') :]}"
            return lambda: not os.path.lexists(build)
        if _ENTRY.fullmatch(name):
            return lambda: not any(_entry_files(self.base_dir, name))
        return None


def _entry_files(base_dir: Path, name: str) -> Iterator[str]:
    """The entry itself, its record, or any temporary of its fetch."""
    for entry in _scandir(base_dir):
        if entry.name == name or entry.name.startswith(name + "."):
            yield entry.name


@contextlib.contextmanager
def _peek(path: Path) -> Iterator[bool]:
    """Free if the lock file is missing (a holder always holds the current file) or unlocked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        fcntl.flock(fd, fcntl.LOCK_UN)
        yield True
    finally:
        os.close(fd)


def _scandir(directory: Path) -> list[os.DirEntry[str]]:
    try:
        return sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink()
