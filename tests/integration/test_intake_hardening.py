"""Issue 16, intake side: pinning on a cache hit, size and time bombs, orphans, lock waits,
legitimate images that used to be refused, and inode exhaustion in `_base`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.images import MiB, run, sha256
from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import InstanceSpec
from vmdisk.settings import Flavor, ImagesType, Settings

UUID = "0b7e5d2a-4c1f-4e8a-9d3b-2f6a1c0e9b77"


def make_host(settings: Settings, **changes: object) -> Host:
    h = Host(dataclasses.replace(settings, **changes))  # type: ignore[arg-type]
    h.prepare()
    return h


def base_files(host: Host) -> list[str]:
    return sorted(p.name for p in host.settings.base_dir.iterdir())


def random_raw(path: Path, size: int = 4 * MiB) -> Path:
    with open("/dev/urandom", "rb") as src:
        path.write_bytes(src.read(size))
    return path


def same_contents(a: Path, a_fmt: str, b: Path, b_fmt: str) -> bool:
    """qemu-img compare: equal guest-visible bytes (a longer image must be zeros past the end)."""
    return (
        run("qemu-img", "compare", "-q", "-f", a_fmt, "-F", b_fmt, a, b, check=False).returncode
        == 0
    )


# -- legitimate images that were refused ------------------------------------------------------


@pytest.fixture
def extended_l2(tmp_path: Path) -> Path:
    path = tmp_path / "ext.qcow2"
    run(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on,cluster_size=128k",
        path,
        "64M",
    )
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 3M", path)
    return path


@pytest.mark.parametrize("force_raw", [True, False])
def test_qcow2_with_extended_l2_is_accepted(
    settings: Settings, extended_l2: Path, force_raw: bool
) -> None:
    host = make_host(settings, force_raw_images=force_raw)
    cached = host.fetch_image(ImageRequest(str(extended_l2)))
    assert cached.record.format == ("raw" if force_raw else "qcow2")
    assert same_contents(extended_l2, "qcow2", cached.path, cached.record.format)
    inst = host.create_instance(
        InstanceSpec("vm1", UUID, Flavor("t", 1, 256, 1)), ImageRequest(str(extended_l2))
    )
    assert same_contents(extended_l2, "qcow2", inst.path / "disk", "qcow2")


@pytest.mark.parametrize("images_type", [ImagesType.DEFAULT, ImagesType.FLAT])
def test_vhdx_without_force_raw_makes_a_working_disk(
    settings: Settings, tmp_path: Path, images_type: ImagesType
) -> None:
    raw = random_raw(tmp_path / "src.raw")
    vhdx = tmp_path / "src.vhdx"
    run("qemu-img", "convert", "-q", "-f", "raw", "-O", "vhdx", raw, vhdx)
    lib = dataclasses.replace(settings.libvirt, images_type=images_type)
    host = make_host(settings, force_raw_images=False, libvirt=lib)
    inst = host.create_instance(
        InstanceSpec("vm1", UUID, Flavor("t", 1, 256, 1)), ImageRequest(str(vhdx))
    )
    fmt = "qcow2" if images_type is ImagesType.DEFAULT else "raw"
    assert same_contents(raw, "raw", inst.path / "disk", fmt)
    cached = host.cache.lookup(host.resolve(ImageRequest(str(vhdx))).name)
    assert cached is not None and cached.record.format == "raw"
    assert sha256(cached.path) != ""
