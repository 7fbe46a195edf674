"""Edges of units and qemu-img's wrapper that the other unit tests leave out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes import FakeRunner, ok
from vmdisk.errors import ToolError
from vmdisk.tools.qemu_img import QemuImg, parse_check
from vmdisk.tools.runner import Limits
from vmdisk.units import MAX_SIZE, PiB, format_size, parse_size


@pytest.mark.parametrize("bad", [True, -1, MAX_SIZE + 1, "9999999E"])
def test_parse_size_refuses(bad: str | int) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


def test_parse_size_accepts_ints_and_max() -> None:
    assert parse_size(4096) == 4096
    assert parse_size(MAX_SIZE) == MAX_SIZE


def test_format_size_stops_at_pib() -> None:
    assert format_size(3 * 1024 * PiB) == "3072.0 PiB"
    assert format_size(1023) == "1023 B"


def test_parse_check_of_unparsable_output_counts_from_the_exit_code() -> None:
    assert parse_check(1, "garbage").check_errors == 1
    assert parse_check(0, "").check_errors == 0


def test_check_with_an_unexpected_exit_code_is_a_tool_error(tmp_path: Path) -> None:
    runner = FakeRunner({("qemu-img", "check"): ok(b"", returncode=127)})
    with pytest.raises(ToolError, match="exit code 127"):
        QemuImg(runner, Limits()).check(tmp_path / "d", "qcow2")


def test_check_passes_limits_and_reads_the_json(tmp_path: Path) -> None:
    out = json.dumps({"corruptions": 1, "corruptions-fixed": 1, "leaks": 3})
    runner = FakeRunner({("qemu-img", "check"): ok(out, returncode=2)})
    limits = Limits(address_space=1 << 30, cpu_seconds=30)
    result = QemuImg(runner, limits).check(tmp_path / "d", "qcow2")
    assert (result.returncode, result.corruptions, result.leaks) == (2, 2, 3)
    argv, seen_limits = runner.seen[0]
    disk = str(tmp_path / "d")
    assert argv == ["qemu-img", "check", "-f", "qcow2", "--force-share", "--output=json", disk]
    assert seen_limits == limits
