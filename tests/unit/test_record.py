"""The typed instance record: version 2 round trip, version 1 upgrade, disk.info from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.domains import DIR, disks, record
from vmdisk import diskinfo
from vmdisk.errors import BackendError
from vmdisk.model import (
    BackendName,
    BlockSource,
    DiskRole,
    FileSource,
    NetworkAuth,
    NetworkSource,
)
from vmdisk.record import BootFile, DiskEntry, DriveInfo, RescueState, decode
from vmdisk.settings import Flavor

DATA = Path(__file__).parent.parent / "data" / "records"
V1_DIR = Path("/srv/vmdisk/instances/6a1f0a4e-1d7b-4f55-9a3e-2a3b4c5d6e7f")


def test_v2_round_trips_every_source_type() -> None:
    rec = record(
        disks=(
            *disks(("disk", "qcow2"), ("disk.config", "raw")),
            DiskEntry("disk.local", DiskRole.EPHEMERAL, "raw", BlockSource(Path("/dev/vg/x"))),
            DiskEntry(
                "disk.swap",
                DiskRole.SWAP,
                "raw",
                NetworkSource("rbd", "vms/x", (("192.0.2.1", 6789),), NetworkAuth("nova", "u")),
                size=64,
                base="swap_64",
            ),
        ),
        rescue=RescueState("r", "b", "qcow2", disks(("disk.rescue", "qcow2")), ("b",)),
        kernel=BootFile("k", "kb"),
        config_drive=DriveInfo("config-2", "iso9660"),
        preallocate=True,
    )
    data = json.loads(rec.to_json())
    assert data["version"] == 2
    assert data["disks"][2]["source"] == {"type": "block", "device": "/dev/vg/x"}
    assert decode(data, DIR) == rec


def test_v1_record_is_upgraded_with_disk_info() -> None:
    data = json.loads((DATA / "v1-rescued.json").read_text())
    formats = json.loads((DATA / "v1-rescued.disk.info").read_text())
    rec = decode(data, V1_DIR, formats)
    assert rec.version == 2 and rec.backend is BackendName.QCOW2
    assert rec.flavor == Flavor("m1.tiny", 1, 512, 1, 1, 64)
    assert rec.preallocate is True
    assert rec.kernel == BootFile("debian-kernel", "8c1f2b0e3d4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c")
    assert [d.name for d in rec.disks] == [
        "disk",
        "disk.local",
        "disk.swap",
        "kernel",
        "disk.config",
    ]
    assert rec.disks[0].source == FileSource(V1_DIR / "disk")
    assert rec.rescue is not None
    assert [d.name for d in rec.rescue.disks] == ["disk.rescue", "disk.config.rescue"]
    assert diskinfo.formats_of(rec) == formats
    assert "9f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e" in rec.bases()
    assert "ephemeral_1_40d1321" in rec.bases()


def test_v1_rbd_disks_become_network_sources() -> None:
    data = json.loads((DATA / "v1-rbd.json").read_text())
    rec = decode(data, Path("/x") / data["uuid"], {})
    assert rec.disks[0].source == NetworkSource("rbd", "vms/7b2f_disk")
    assert diskinfo.formats_of(rec) == {}


@pytest.mark.parametrize(
    "bad",
    [[], {"version": 2}, {"version": 2, "disks": [{"source": {"type": "tape"}}]}],
)
def test_a_damaged_record_is_a_backend_error(bad: object) -> None:
    with pytest.raises(BackendError, match=r"instance\.json"):
        decode(bad, DIR)
