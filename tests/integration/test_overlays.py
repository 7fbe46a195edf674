"""qcow2 overlays with extended L2 entries (issue 21, bench X1), read by qemu-img and qemu-io."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from tests.images import MiB, qemu_info, run
from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import InstanceSpec
from vmdisk.settings import Flavor, Settings, load_settings

UUID = "0c6f2b1e-8a3d-4f5e-9b7c-1d2e3f4a5b6c"
FLAVOR = Flavor("t1", 1, 256, 1, ephemeral_gb=1)


def _base(tmp_path: Path) -> Path:
    raw = tmp_path / "img.raw"
    with open(raw, "wb") as fh:
        fh.write(os.urandom(8 * MiB))
        fh.truncate(64 * MiB)
    return raw


def _host(settings: Settings, extended_l2: bool) -> Host:
    lib = dataclasses.replace(settings.libvirt, qcow2_extended_l2=extended_l2)
    return Host(dataclasses.replace(settings, libvirt=lib))


@pytest.mark.parametrize("extended_l2", [True, False])
def test_overlays_follow_the_setting(settings: Settings, tmp_path: Path, extended_l2: bool) -> None:
    host = _host(settings, extended_l2)
    inst = host.create_instance(
        InstanceSpec("vm1", UUID, FLAVOR), ImageRequest(str(_base(tmp_path)))
    )
    for name in ("disk", "disk.local"):
        info = qemu_info(inst.path / name, "qcow2")
        assert info["format-specific"]["data"].get("extended-l2", False) is extended_l2, name
        assert info["cluster-size"] == (128 * 1024 if extended_l2 else 64 * 1024), name
        assert info["backing-filename-format"] == "raw"
    # The guest's view is the base, byte for byte, either way.
    base = host.settings.base_dir / inst.record.image_base
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", inst.path / "disk", base)


def test_small_writes_allocate_subclusters_not_clusters(settings: Settings, tmp_path: Path) -> None:
    grown = {}
    request = ImageRequest(str(_base(tmp_path)))
    for extended_l2 in (True, False):
        host = _host(settings, extended_l2)
        spec = InstanceSpec(f"vm{int(extended_l2)}", f"{UUID[:-1]}{int(extended_l2)}", FLAVOR)
        inst = host.create_instance(spec, request)
        disk = inst.path / "disk"
        before = disk.stat().st_blocks
        writes = [f"write -P 0x5a {i * 1024 * 1024 + 8192} 4k" for i in range(32)]
        run("qemu-io", "-f", "qcow2", *[a for w in writes for a in ("-c", w)], disk)
        grown[extended_l2] = (disk.stat().st_blocks - before) * 512
        out = run("qemu-io", "-f", "qcow2", "-c", f"read -P 0x5a {5 * MiB + 8192} 4k", disk)
        assert "read 4096/4096" in out.stdout
    # 32 writes of 4 KiB: 32 x 64 KiB copied-on-write clusters without, 32 x 4 KiB with.
    assert grown[False] >= 32 * 64 * 1024
    assert grown[True] <= grown[False] // 8


def test_the_setting_reads_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "vmdisk.toml"
    config.write_text("[libvirt]\nqcow2_extended_l2 = false\n")
    assert load_settings(config, env={}).libvirt.qcow2_extended_l2 is False
    assert load_settings(None, env={}).libvirt.qcow2_extended_l2 is True
