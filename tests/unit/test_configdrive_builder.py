"""The config drive as bytes: an ISO built in tmp_path read back with pycdlib; vfat's argv."""

from __future__ import annotations

import io
from pathlib import Path

import pycdlib
import pytest

from tests.fakes import FakeRunner
from vmdisk.configdrive.builder import VFAT_PAYLOAD_MAX, VFAT_SIZE, build_iso, build_vfat
from vmdisk.errors import InvalidRequest

FILES = {
    "openstack/latest/meta_data.json": b'{"uuid": "u"}',
    "openstack/latest/user_data": b"#cloud-config\n",
    "openstack/content/0000": b"\x00\x01binary",
    "ec2/latest/meta-data.json": b"{}",
}


def read_rr(iso_path: Path, rel: str) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path="/" + rel)
        return out.getvalue()
    finally:
        iso.close()


def test_iso_holds_every_file_under_its_rock_ridge_name(tmp_path: Path) -> None:
    target = tmp_path / "disk.config"
    build_iso(FILES, "config-2", target)
    for rel, data in FILES.items():
        assert read_rr(target, rel) == data


def test_iso_carries_the_label_and_joliet_names(tmp_path: Path) -> None:
    target = tmp_path / "disk.config"
    build_iso(FILES, "cidata", target)
    assert target.stat().st_mode & 0o777 == 0o600  # it carries admin_pass
    iso = pycdlib.PyCdlib()
    iso.open(str(target))
    try:
        assert iso.pvd.volume_identifier.rstrip(b" ") == b"cidata"
        assert iso.has_joliet() and iso.has_rock_ridge()
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path="/openstack/latest/user_data")
        assert out.getvalue() == b"#cloud-config\n"
        names = [c.file_identifier() for c in iso.list_children(rr_path="/openstack")]
        assert b"latest" in names and b"content" in names
    finally:
        iso.close()


def test_iso_refuses_an_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "disk.config"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        build_iso(FILES, "config-2", target)
    assert target.read_bytes() == b"old"


def test_vfat_runs_mkfs_then_mcopy_of_the_top_directories(tmp_path: Path) -> None:
    target = tmp_path / "disk.config"
    runner = FakeRunner()
    build_vfat(FILES, "config-2", target, runner)
    assert target.stat().st_size == VFAT_SIZE
    assert target.stat().st_blocks == 0 or target.stat().st_blocks * 512 < VFAT_SIZE
    (mkfs, _), (mcopy, _) = runner.seen
    assert mkfs == ["mkfs.vfat", "-n", "config-2", str(target)]
    assert mcopy[:4] == ["mcopy", "-s", "-i", str(target)]
    assert [Path(p).name for p in mcopy[4:-1]] == ["ec2", "openstack"]
    assert mcopy[-1] == "::/"
    assert not list(tmp_path.glob(".drive-*"))  # the staging tree is gone


def test_vfat_refuses_content_that_does_not_fit(tmp_path: Path) -> None:
    runner = FakeRunner()
    big = {"openstack/latest/user_data": b"x" * (VFAT_PAYLOAD_MAX + 1)}
    with pytest.raises(InvalidRequest, match="vfat drive holds at most") as err:
        build_vfat(big, "config-2", tmp_path / "disk.config", runner)
    assert err.value.reason == "too-large"
    assert runner.calls == 0
    assert not (tmp_path / "disk.config").exists()
