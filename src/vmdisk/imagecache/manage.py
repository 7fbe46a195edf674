"""`image rm` and `image refresh`: change one cached image under its exclusive lock.

Removal is refused while anything uses the base (instance records, qcow2 backing files, builds
in progress), re-checked inside the lock so a create that started meanwhile wins. A refresh
fetches the source again next to the base; if the content changed and qcow2 overlays are
built on the old base, the old file is kept under a retired name (a hard link: no copy) and the
overlays are re-pointed at it with `qemu-img rebase -u` (their content is unchanged, only the
header's backing path moves), then the new base is renamed over Nova's name. The retired entry
has no image id or alias; the cleaner ages it out once its last instance is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmdisk.errors import ImageInUse
from vmdisk.fsutil import fsync_dir, temp_name, touch
from vmdisk.imagecache import usage
from vmdisk.imagecache.aliases import AliasStore
from vmdisk.imagecache.dedup import share_with_twin
from vmdisk.imagecache.intake import Intake
from vmdisk.imagecache.listing import ImageRow
from vmdisk.imagecache.names import RETIRED_PREFIX
from vmdisk.imagecache.records import BaseRecord, cache_name, read_record, record_path, write_record
from vmdisk.imagecache.request import ResolvedImage
from vmdisk.imagecache.store import ImageCache
from vmdisk.tools.headers import qcow2_backing_file
from vmdisk.tools.runner import Runner


@dataclass(frozen=True, slots=True)
class Overlays:
    """The qcow2 disks built on one base: vmdisk's (re-pointable) and foreign (Nova's)."""

    ours: list[Path]
    foreign: list[Path]


@dataclass(frozen=True, slots=True)
class RefreshResult:
    image_id: str
    changed: bool
    old_sha256: str
    new_sha256: str
    retired: str | None  # entry name the old base lives on as, when instances still use it
    rebased: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def remove_image(
    cache: ImageCache, aliases: AliasStore, row: ImageRow, in_use: Callable[[], Set[str]]
) -> list[str]:
    """Remove a base, its record, its lock and its aliases; returns the aliases removed."""
    with cache.locks.exclusive(row.name):
        if row.name in in_use():
            raise ImageInUse(
                f"image {row.image_id or row.name} is in use by "
                + (", ".join(row.users) or "a create in progress"),
                hint="delete those instances first (vmdisk delete NAME)",
                reason="in-use",
            )
        row.path.unlink(missing_ok=True)
        record_path(row.path).unlink(missing_ok=True)
        fsync_dir(row.path.parent)
        cache.locks.remove(row.name)
    return aliases.remove_image(row.record.image_id) if row.image_id else []


def refresh_image(
    cache: ImageCache,
    row: ImageRow,
    image: ResolvedImage,
    overlays: Callable[[], Overlays],
    runner: Runner,
) -> RefreshResult:
    """Fetch `image` again into `row`'s entry; old instances keep the old content."""
    base, old = row.path, row.record
    staging = temp_name(base)
    with cache.locks.exclusive(row.name):
        try:
            # The plain intake: sharing with a twin happens once the new base has its name.
            new = Intake.fetch(cache.intake, image, staging)
            if new.sha256 == old.sha256:
                touch(base)
                return RefreshResult(old.image_id, False, old.sha256, new.sha256, None, [])
            users = overlays()
            retired, rebased = _retire(base, old, users, runner) if users.ours else (None, [])
            _check_foreign(users, old)
            write_record(base, new)
            os.replace(staging, base)
            fsync_dir(base.parent)
            share_with_twin(base.parent, cache.locks, row.name, new)
        finally:
            staging.unlink(missing_ok=True)
            record_path(staging).unlink(missing_ok=True)
    return RefreshResult(old.image_id, True, old.sha256, new.sha256, retired, rebased)


def _check_foreign(users: Overlays, old: BaseRecord) -> None:
    if users.foreign:
        raise ImageInUse(
            f"image {old.image_id} backs disks vmdisk did not make: "
            + ", ".join(str(p) for p in users.foreign),
            hint="those instances (Nova's?) cannot be re-pointed; the base was left as it was",
            reason="in-use",
        )


def _retire(base: Path, old: BaseRecord, users: Overlays, runner: Runner) -> tuple[str, list[str]]:
    """Keep the old base under a retired name and re-point vmdisk's overlays at it."""
    _check_foreign(users, old)
    running = usage.holders([*users.ours, base])
    if running:
        raise ImageInUse(
            f"image {old.image_id} is open by running processes: {usage.describe(running)}",
            hint="stop those instances, then refresh",
            reason="in-use",
        )
    retired_id = f"{RETIRED_PREFIX}{old.image_id}@{old.sha256[:12]}"
    name = cache_name(retired_id)
    retired = base.with_name(name)
    if read_record(retired) is None:
        tmp = temp_name(retired)
        os.link(base, tmp)
        write_record(retired, dataclasses.replace(old, image_id=retired_id))
        os.replace(tmp, retired)
    touch(retired)
    rebased = []
    for disk in users.ours:
        _rebase(runner, disk, retired, old.format)
        rebased.append(str(disk))
    return name, rebased


def _rebase(runner: Runner, disk: Path, backing: Path, fmt: str) -> None:
    """Only the header's backing path changes (-u): the old and new files are the same bytes."""
    argv = ["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", str(backing), "-F", fmt, str(disk)]
    runner.run(argv, timeout=120)


def overlays_on(base: Path, ours: Sequence[Path], foreign: Sequence[Path]) -> Overlays:
    """Filter candidate qcow2 disks down to those whose backing file is `base`."""

    def on(disk: Path) -> bool:
        with contextlib.suppress(Exception):
            return qcow2_backing_file(disk) == str(base)
        return False

    return Overlays([d for d in ours if on(d)], [d for d in foreign if on(d)])
