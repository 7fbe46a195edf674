"""P9's tree: N bases in _base and N instances, half of them using a base (record + header)."""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from pathlib import Path


def qcow2_header(backing: str) -> bytes:
    name = backing.encode()
    head = struct.pack(">4sIQIIQ", b"QFI\xfb", 3, 512, len(name), 16, 1 << 30)
    return head.ljust(512, b"\0") + name


def make_tree(root: Path, count: int) -> None:
    base_dir = root / "_base"
    base_dir.mkdir(parents=True)
    for i in range(count):
        name = hashlib.sha1(f"image-{i}".encode()).hexdigest()
        (base_dir / name).write_bytes(b"")
        inst = uuid.UUID(int=i + 1, version=4)
        directory = root / str(inst)
        directory.mkdir()
        used = name if i % 2 == 0 else "0" * 40
        record = {
            "name": f"vm-{i}",
            "uuid": str(inst),
            "backend": "qcow2",
            "flavor": {"name": "x", "vcpus": 1, "memory_mb": 64, "root_gb": 1},
            "image_id": f"image-{i}",
            "image_base": used,
            "os_type": "linux",
            "disks": [{"name": "disk", "base": used}],
            "created_at": "2026-01-01",
        }
        (directory / "instance.json").write_text(json.dumps(record))
        disk = directory / "disk"
        disk.write_bytes(qcow2_header(str(base_dir / name)))
        (directory / "disk.info").write_text(json.dumps({str(disk): "qcow2"}))
