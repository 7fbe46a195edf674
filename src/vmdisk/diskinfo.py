"""disk.info: `{absolute disk path: format}` per instance, the format pin (bug 1221190).

Every later qemu-img call on an instance disk passes -f from here, never a probe.
"""

from __future__ import annotations

import json
from pathlib import Path

from vmdisk.errors import BackendError
from vmdisk.fsutil import write_atomic

FILENAME = "disk.info"


def read(instance_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((instance_dir / FILENAME).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise BackendError(f"{instance_dir / FILENAME} is not valid JSON") from exc
    if not isinstance(data, dict):
        raise BackendError(f"{instance_dir / FILENAME} is not a JSON object")
    return {str(k): str(v) for k, v in data.items()}


def write(instance_dir: Path, formats: dict[str, str]) -> None:
    write_atomic(instance_dir / FILENAME, (json.dumps(formats) + "\n").encode())


def format_of(instance_dir: Path, disk: Path) -> str:
    """The pinned format of one disk; a disk missing from disk.info is an error, not a probe."""
    formats = read(instance_dir)
    try:
        return formats[str(disk)]
    except KeyError:
        raise BackendError(
            f"{disk} has no entry in disk.info; refusing to guess its format",
            hint="the instance directory was edited by hand or is damaged",
        ) from None
