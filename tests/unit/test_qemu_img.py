from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes import FakeRunner, ok
from vmdisk.tools.qemu_img import QemuImg, parse_check, parse_info
from vmdisk.tools.runner import Limits

DATA = Path(__file__).parent.parent / "data"
LIMITS = Limits(address_space=2 << 30, cpu_seconds=30)


def test_info_argv_always_has_format_force_share_and_limits() -> None:
    runner = FakeRunner(
        {("qemu-img", "info"): ok((DATA / "qemu-img-info-qcow2-backing.json").read_text())}
    )
    info = QemuImg(runner, LIMITS).info(Path("/x/img"), "qcow2")
    argv, limits = runner.seen[0]
    assert argv == ["qemu-img", "info", "-f", "qcow2", "--force-share", "--output=json", "/x/img"]
    assert limits == LIMITS
    assert "--backing-chain" not in argv
    assert info.format == "qcow2"
    assert info.virtual_size == 1 << 30
    assert info.backing_file == "/tmp/b.raw"
    assert info.backing_format == "raw"
    assert info.cluster_size == 65536


def test_info_parses_data_file() -> None:
    info = parse_info((DATA / "qemu-img-info-qcow2-datafile.json").read_text())
    assert info.data_file == "/tmp/df.raw"
    assert info.backing_file is None


def test_info_garbage_is_a_tool_error() -> None:
    from vmdisk.errors import ToolError

    with pytest.raises(ToolError):
        parse_info("not json")


def test_create_overlay_argv_passes_backing_format() -> None:
    runner = FakeRunner()
    QemuImg(runner, LIMITS).create(
        Path("/i/disk"),
        "qcow2",
        10 << 30,
        backing_file=Path("/b/base"),
        backing_format="raw",
        cluster_size=65536,
    )
    assert runner.seen[0][0] == [
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "/b/base",
        "-F",
        "raw",
        "-o",
        "cluster_size=65536",
        "/i/disk",
        str(10 << 30),
    ]


def test_create_refuses_backing_without_format() -> None:
    with pytest.raises(ValueError):
        QemuImg(FakeRunner(), LIMITS).create(Path("/i/d"), "qcow2", None, backing_file=Path("/b"))


def test_convert_and_resize_always_name_formats() -> None:
    runner = FakeRunner()
    q = QemuImg(runner, LIMITS)
    q.convert(Path("/s"), "qcow2", Path("/d"), "raw", cache_mode="none")
    q.resize(Path("/d"), "raw", 1 << 30)
    assert runner.seen[0][0] == [
        "qemu-img",
        "convert",
        "-q",
        "-t",
        "none",
        "-f",
        "qcow2",
        "-O",
        "raw",
        "/s",
        "/d",
    ]
    assert runner.seen[0][1] == LIMITS
    assert runner.seen[1][0] == ["qemu-img", "resize", "-q", "-f", "raw", "/d", str(1 << 30)]


def test_check_results() -> None:
    clean = parse_check(0, (DATA / "qemu-img-check-clean.json").read_text())
    assert clean.ok
    assert not parse_check(2, '{"corruptions": 3, "check-errors": 0}').ok
    assert parse_check(3, '{"leaks": 2, "check-errors": 0}').ok
    assert not parse_check(1, "").ok
