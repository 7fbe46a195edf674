"""Reflinks on a real XFS (mkfs.xfs -m reflink=1 on a loop device), and the ext4 fallback.

filefrag -v marks extents that two files share `shared`: that, not timing, is what shows the
clone happened; the bytes are compared too.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images import MiB, run, sha256
from vmdisk.fsutil import copy_sparse
from vmdisk.host import Host
from vmdisk.imagecache.digest import file_digest
from vmdisk.imagecache.records import read_record
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import BackendName, InstanceSpec
from vmdisk.settings import Flavor, load_settings

FLAVOR = Flavor("t1", 1, 256, 1)
UUID = "7d0e4c2a-1b3f-4e5d-8a9b-0c1d2e3f4a5b"


def _usable() -> bool:
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("mkfs.xfs", "mount", "filefrag"))


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    if not _usable():
        pytest.skip("needs root, mkfs.xfs, mount and filefrag (scripts/install-deps)")
    image, mnt = tmp_path / "xfs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(1024 * MiB)
    run("mkfs.xfs", "-q", "-m", "reflink=1", image)
    run("mount", "-o", "loop", image, mnt)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _shared(path: Path) -> bool:
    return "shared" in run("filefrag", "-v", path).stdout


def _image(path: Path) -> Path:
    with open(path, "wb") as fh:
        fh.write(os.urandom(4 * MiB))
        fh.seek(32 * MiB)
        fh.write(os.urandom(MiB))
        fh.truncate(64 * MiB)
    return path


def _host(root: Path, backend: str = "qcow2") -> Host:
    settings = load_settings(None, env={}, overrides={"instances_path": str(root)})
    lib = dataclasses.replace(settings.libvirt, images_type=backend, virt_type="qemu")
    return Host(dataclasses.replace(settings, libvirt=lib))


def test_a_local_source_is_cloned_into_the_cache(xfs: Path) -> None:
    source = _image(xfs / "src.raw")
    host = _host(xfs / "instances")
    cached = host.fetch_image(ImageRequest(str(source)))
    assert sha256(cached.path) == sha256(source)
    assert _shared(cached.path) and _shared(source)
    record = read_record(cached.path)
    assert record is not None and record.sha256 == file_digest(source)
    assert [p.name for p in host.settings.base_dir.iterdir() if ".part-" in p.name] == []
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", cached.path, source)


def test_flat_disks_are_reflinks_of_the_base(xfs: Path) -> None:
    source = _image(xfs / "src.raw")
    host = _host(xfs / "instances", "flat")
    inst = host.create_instance(InstanceSpec("vm1", UUID, FLAVOR), ImageRequest(str(source)))
    disk = inst.path / "disk"
    assert inst.record.backend == BackendName.FLAT
    assert _shared(disk)
    with open(disk, "rb") as fh:
        assert fh.read(64 * MiB) == source.read_bytes()
    assert disk.stat().st_size == 1024 * MiB  # grown to the flavor's root, past the base


def test_ext4_falls_back_to_a_sparse_copy(tmp_path: Path) -> None:
    if run("stat", "-f", "-c", "%T", tmp_path).stdout.strip() not in ("ext2/ext3", "tmpfs"):
        pytest.skip("this test is about a file system without reflink")
    source = _image(tmp_path / "src.raw")
    assert copy_sparse(source, tmp_path / "copy.raw") == "sparse"
    assert (tmp_path / "copy.raw").read_bytes() == source.read_bytes()
    assert (tmp_path / "copy.raw").stat().st_blocks <= source.stat().st_blocks
    host = _host(tmp_path / "instances")
    cached = host.fetch_image(ImageRequest(str(source)))
    assert sha256(cached.path) == sha256(source)
    assert not _shared(cached.path)
