"""Instance records (`<uuid>/instance.json`), lookup by name or uuid, reservation and removal.

An instance exists once its directory `<instances_path>/<uuid>` exists: it is built under
`.building-<uuid>` and renamed into place as the last step, so a crash leaves nothing that
`list` shows. A build holds `locks/vmdisk-build-<uuid>`; a build directory whose lock is free
belongs to a dead process and is removed by the next create or prune.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vmdisk import diskinfo
from vmdisk.errors import InstanceExists, InstanceNotFound, InvalidRequest, VmdiskError
from vmdisk.fsutil import ensure_real_dir, fsync_dir, sync_file, write_atomic
from vmdisk.locks import Locks
from vmdisk.model import NAME_RE
from vmdisk.record import InstanceRecord, decode

RECORD = "instance.json"
RECORD_MODE = 0o600  # the record names image sources: the owner's business only
BUILDING = ".building-"
DELETING = ".deleting-"
NAMES_LOCK = "instance-names"
BASES_MARKER = ".bases"
NAMES_DIR = ".names"


@dataclass(frozen=True, slots=True)
class Instance:
    path: Path
    record: InstanceRecord


def read_record(directory: Path) -> InstanceRecord:
    """The record of an instance directory; a version-1 record is upgraded with disk.info."""
    data = json.loads((directory / RECORD).read_bytes())
    formats = diskinfo.read(directory) if isinstance(data, dict) and "version" not in data else None
    return decode(data, directory, formats)


class InstanceStore:
    def __init__(self, instances_path: Path, locks: Locks, reserved: frozenset[str]) -> None:
        self.root = instances_path
        self.locks = locks
        self.reserved = reserved  # _base, locks: directories that are never instances

    def all(self) -> list[Instance]:
        found = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name.startswith(".") or entry.name in self.reserved:
                continue
            inst = self._load(Path(entry.path))
            if inst is not None:
                found.append(inst)
        return sorted(found, key=lambda i: i.record.name)

    def foreign(self) -> list[Path]:
        """Instance directories without a vmdisk record: Nova's, on a shared compute node.

        They are never listed or changed, but what their disks are made from is in use.
        """
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        return sorted(
            Path(e.path)
            for e in entries
            if not e.name.startswith(".")
            and e.name not in self.reserved
            and e.is_dir(follow_symlinks=False)
            and not os.path.lexists(os.path.join(e.path, RECORD))
        )

    def find(self, ref: str) -> Instance:
        if not ref or "/" in ref or "\x00" in ref or ref.startswith("."):
            raise InvalidRequest(f"invalid instance name or uuid {ref!r}", reason="bad-name")
        uuid = self._uuid_of(ref) or ref
        found = self._load(self.root / uuid)
        if found is not None and ref in (found.record.name, found.record.uuid):
            return found
        raise InstanceNotFound(
            f"no instance named {ref!r}",
            reason="not-found",
            hint="vmdisk list shows the instances on this host",
        )

    def _load(self, directory: Path) -> Instance | None:
        try:
            record = read_record(directory)
        except (OSError, ValueError, VmdiskError):
            return None
        return Instance(directory, record) if record.uuid == directory.name else None

    def _uuid_of(self, name: str) -> str | None:
        """The name index (`.names/<name>` holds the uuid): lookups and uniqueness in O(1)."""
        try:
            return (self.root / NAMES_DIR / name).read_text().strip() or None
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    @contextlib.contextmanager
    def reserve(self, name: str, uuid: str, bases: Iterable[str] = ()) -> Iterator[Path]:
        """A build directory for a new instance; removed again if the block fails.

        It names the _base entries the build will use before any is fetched, so a cache
        cleaner that lists `_base` after this point counts them as in use.
        """
        with contextlib.ExitStack() as stack:
            with self.locks.exclusive(NAMES_LOCK):
                self._claim(name, uuid)
                # The build lock is held before the directory exists: a reaper that sees the
                # directory can never find its lock free while this build is alive.
                stack.enter_context(self.locks.exclusive(f"build-{uuid}"))
                build = self.root / f"{BUILDING}{uuid}"
                build.mkdir(mode=0o755)
                (build / ".name").write_text(name)
                (build / BASES_MARKER).write_text("\n".join(sorted(set(bases))) + "\n")
            try:
                # The name's fsyncs wait for the disk: outside NAMES_LOCK, so concurrent
                # creates do not queue behind each other's (still before publish).
                sync_file(self.root / NAMES_DIR / name)
                yield build
            except BaseException:
                shutil.rmtree(build, ignore_errors=True)
                self._release(name, uuid)
                raise
            finally:
                self.locks.remove(f"build-{uuid}")  # still held: nobody can be waiting on it

    def _claim(self, name: str, uuid: str) -> None:
        """Take `name` in the index for `uuid`, reclaiming it from a dead build first."""
        if not NAME_RE.fullmatch(name):
            raise InvalidRequest(f"invalid instance name {name!r}", reason="bad-name")
        if (self.root / uuid).exists() or (self.root / f"{BUILDING}{uuid}").exists():
            self._reap_directories()  # NAMES_LOCK is held here: names are reaped by prune
            if (self.root / uuid).exists() or (self.root / f"{BUILDING}{uuid}").exists():
                raise InstanceExists(f"uuid {uuid} is already used", reason="exists")
        names = self.root / NAMES_DIR
        ensure_real_dir(names)
        owner = self._uuid_of(name)
        if owner is not None and self._alive(owner):
            raise InstanceExists(f"an instance named {name!r} exists ({owner})", reason="exists")
        write_atomic(names / name, uuid.encode(), sync=False)  # reserve() syncs it, unlocked

    def name_owner(self, name: str) -> str | None:
        """The uuid the name index gives for `name` (None: no entry)."""
        return self._uuid_of(name)

    def alive(self, uuid: str) -> bool:
        """An instance with this uuid exists, or a live create is building it."""
        return self._alive(uuid)

    def _alive(self, uuid: str) -> bool:
        if (self.root / uuid / RECORD).exists():
            return True
        build = self.root / f"{BUILDING}{uuid}"
        if not build.exists():
            return False
        with self.locks.try_exclusive(f"build-{uuid}") as free:
            return not free

    def _release(self, name: str, uuid: str) -> None:
        with contextlib.suppress(OSError), self.locks.exclusive(NAMES_LOCK):
            if self._uuid_of(name) == uuid:
                (self.root / NAMES_DIR / name).unlink()

    def publish(self, build: Path, final: Path) -> None:
        with self.locks.exclusive(NAMES_LOCK):
            if final.exists():
                raise InstanceExists(f"{final} appeared while building", reason="exists")
            os.rename(build, final)
            (final / ".name").unlink(missing_ok=True)
            (final / BASES_MARKER).unlink(missing_ok=True)
            fsync_dir(self.root)

    def write_record(self, directory: Path, record: InstanceRecord) -> None:
        """Replace the record of a published instance, and disk.info derived from it."""
        diskinfo.write(directory, record)
        write_atomic(directory / RECORD, record.to_json(), RECORD_MODE)

    def delete(self, inst: Instance) -> None:
        """Rename out of sight first (atomic), then remove; never touches _base."""
        doomed = self.root / f"{DELETING}{inst.record.uuid}-{secrets.token_hex(4)}"
        os.rename(inst.path, doomed)
        self._release(inst.record.name, inst.record.uuid)
        shutil.rmtree(doomed, ignore_errors=True)

    def reap(self) -> list[str]:
        """Remove what dead processes left: build directories, half-deleted instances, and
        name entries whose instance is gone."""
        removed = self._reap_directories()
        removed += self._reap_names()
        return removed

    def _reap_names(self) -> list[str]:
        names = self.root / NAMES_DIR
        if not names.is_dir() or names.is_symlink():
            return []
        removed = []
        with self.locks.exclusive(NAMES_LOCK):
            for entry in os.scandir(names):
                if not NAME_RE.fullmatch(entry.name) or entry.is_symlink():
                    continue
                owner = self._uuid_of(entry.name)
                if owner is not None and not self._alive(owner):
                    os.unlink(entry.path)
                    removed.append(f"{NAMES_DIR}/{entry.name}")
        return removed

    def _reap_directories(self) -> list[str]:
        removed = []
        for entry in list(os.scandir(self.root)) if self.root.exists() else []:
            if entry.name.startswith(DELETING):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
            elif entry.name.startswith(BUILDING):
                uuid = entry.name[len(BUILDING) :]
                with self.locks.try_exclusive(f"build-{uuid}") as free:
                    if free:
                        shutil.rmtree(entry.path, ignore_errors=True)
                        self.locks.remove(f"build-{uuid}")
                        removed.append(entry.name)
        return removed

    def building_bases(self) -> set[str]:
        """Bases named by builds in progress (see reserve)."""
        names: set[str] = set()
        for build in self.root.glob(f"{BUILDING}*"):
            with contextlib.suppress(OSError):
                names.update(n for n in (build / BASES_MARKER).read_text().split() if n)
        return names
