"""Blank templates in _base (`ephemeral_<GB>_<hash7>`, `swap_<MB>`): made once, then shared.

Same protocol as image bases: made under the entry's exclusive lock through a temporary name,
used under its shared lock and touched, so the cleaner never removes one mid-create.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from vmdisk.fsutil import (
    fsync_dir,
    open_exclusive,
    regular_file_or_none,
    removing_on_error,
    temp_name,
    touch,
)
from vmdisk.locks import Locks


class TemplateCache:
    def __init__(self, base_dir: Path, locks: Locks) -> None:
        self.base_dir = base_dir
        self.locks = locks

    @contextlib.contextmanager
    def using(self, name: str, size: int, make: Callable[[Path], None]) -> Iterator[Path]:
        """Yield the template `name`, making it first (sparse file of `size`, then `make`)."""
        path = self.base_dir / name
        for _attempt in range(3):
            with self.locks.shared(name):
                if regular_file_or_none(path) is not None:
                    touch(path)
                    yield path
                    touch(path)
                    return
            with self.locks.exclusive(name):
                if regular_file_or_none(path) is None:
                    self._make(path, size, make)
        raise RuntimeError(f"template {name} keeps disappearing")

    def _make(self, path: Path, size: int, make: Callable[[Path], None]) -> None:
        for stale in self.base_dir.glob(f"{path.name}.part-*"):
            stale.unlink(missing_ok=True)
        tmp = temp_name(path)
        with removing_on_error(tmp):
            fd = open_exclusive(tmp, 0o644)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
            make(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        fsync_dir(self.base_dir)
