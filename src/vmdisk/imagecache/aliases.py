"""Image aliases: short names (`noble`) for image ids, kept in one small JSON file in `_base`.

The file is `_base/aliases.json` ({"alias": "image id"}), 0644, rewritten through a temporary
name and a rename while the `aliases` lock is held, so readers never see half a file and two
writers never lose each other's change. Hosts sharing `_base` share the aliases.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from vmdisk.errors import InvalidRequest
from vmdisk.fsutil import write_atomic
from vmdisk.locks import Locks

FILENAME = "aliases.json"
LOCK = "aliases"
MAX_ALIASES = 10000
#: No "/" (a path), no ":" (a URL or ss:), no leading "." (./x is a path): a bare word.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def valid_alias(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def check_alias(name: str) -> str:
    if not valid_alias(name):
        raise InvalidRequest(
            f"bad alias {name!r}",
            hint="an alias is 1-128 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit",
            reason="bad-alias",
        )
    return name


class AliasStore:
    """Read and change the aliases of one `_base`; every change is one atomic rewrite."""

    def __init__(self, base_dir: Path, locks: Locks) -> None:
        self.path = base_dir / FILENAME
        self.locks = locks

    def all(self) -> dict[str, str]:
        """alias -> image id; a missing or unreadable file is no aliases, never a crash."""
        try:
            raw = json.loads(self.path.read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        if not isinstance(raw, dict):
            return {}
        return {
            str(k): str(v) for k, v in raw.items() if isinstance(v, str) and valid_alias(str(k))
        }

    def get(self, name: str) -> str | None:
        return self.all().get(name)

    def aliases_of(self, image_id: str) -> list[str]:
        return sorted(a for a, i in self.all().items() if i == image_id)

    def set(self, name: str, image_id: str) -> str | None:
        """Point `name` at `image_id`; returns the id it pointed at before, if any."""
        check_alias(name)
        with self.locks.exclusive(LOCK):
            aliases = self.all()
            before = aliases.get(name)
            if before is None and len(aliases) >= MAX_ALIASES:
                raise InvalidRequest(f"more than {MAX_ALIASES} aliases", reason="too-many")
            aliases[name] = image_id
            self._write(aliases)
        return before

    def remove(self, name: str) -> str:
        """Remove `name`; returns the id it named. An unknown alias is an error."""
        with self.locks.exclusive(LOCK):
            aliases = self.all()
            if name not in aliases:
                raise InvalidRequest(f"no alias {name!r}", reason="no-alias")
            image_id = aliases.pop(name)
            self._write(aliases)
        return image_id

    def remove_image(self, image_id: str) -> list[str]:
        """Drop every alias of an image that is gone (image rm); returns their names."""
        with self.locks.exclusive(LOCK):
            aliases = self.all()
            gone = sorted(a for a, i in aliases.items() if i == image_id)
            if gone:
                self._write({a: i for a, i in aliases.items() if i != image_id})
        return gone

    def _write(self, aliases: dict[str, str]) -> None:
        data = json.dumps(dict(sorted(aliases.items())), indent=1).encode() + b"\n"
        write_atomic(self.path, data, 0o644)
