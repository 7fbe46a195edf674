"""Which `_base` entries are in use: by instance records, by qcow2 backing files, by builds."""

from __future__ import annotations

import contextlib
from pathlib import Path

from vmdisk.instances import InstanceStore
from vmdisk.model import FileSource
from vmdisk.tools.headers import qcow2_backing_file


def bases_in_use(store: InstanceStore, base_dir: Path) -> set[str]:
    """Every entry referenced by a record, a disk's backing file, or a build in progress.

    Backing files are read from the qcow2 headers (no subprocess): they catch instances whose
    record does not name the base, as Nova's backing-file scan does.
    """
    used: set[str] = set()
    for inst in store.all():
        used |= inst.record.bases()
        for disk in inst.record.all_disks():
            if disk.format != "qcow2" or not isinstance(disk.source, FileSource):
                continue
            with contextlib.suppress(Exception):
                backing = qcow2_backing_file(disk.source.path)
                if backing and Path(backing).parent == base_dir:
                    used.add(Path(backing).name)
    used |= store.building_bases()
    return used
