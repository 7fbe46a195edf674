"""disk.info: `{absolute disk path: format}` per instance, the format pin (bug 1221190).

Nova's tools read it; vmdisk writes it from the instance record (formats_of) and reads the
record, never this file, except to upgrade a version-1 record. Every qemu-img call on an
instance disk passes -f from the record, never a probe.
"""

from __future__ import annotations

import json
from pathlib import Path

from vmdisk.errors import BackendError
from vmdisk.fsutil import write_atomic
from vmdisk.model import BlockSource, FileSource
from vmdisk.record import InstanceRecord

FILENAME = "disk.info"


def formats_of(record: InstanceRecord) -> dict[str, str]:
    """Every disk that is a file or a block device, with its pinned format."""
    formats: dict[str, str] = {}
    for disk in record.all_disks():
        if isinstance(disk.source, FileSource):
            formats[str(disk.source.path)] = disk.format
        elif isinstance(disk.source, BlockSource):
            formats[str(disk.source.device)] = disk.format
    return formats


def encode(record: InstanceRecord) -> bytes:
    return (json.dumps(formats_of(record)) + "\n").encode()


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


def write(instance_dir: Path, record: InstanceRecord) -> None:
    write_atomic(instance_dir / FILENAME, encode(record))
