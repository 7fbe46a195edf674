"""The runner and the qemu-img wrapper against real processes and real files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.images import MiB, qemu_info, sha256
from vmdisk.errors import ToolError, ToolLimitExceeded, ToolNotFound
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import Limits, Secret, SubprocessRunner

LIMITS = Limits(address_space=2 << 30, cpu_seconds=30)


def test_address_space_limit_kills_a_greedy_child() -> None:
    runner = SubprocessRunner()
    greedy = [sys.executable, "-c", "x = bytearray(512 * 1024 * 1024); print(len(x))"]
    assert runner.run(greedy).text.strip() == str(512 * MiB)  # fine without limits
    with pytest.raises(ToolError) as err:
        runner.run(greedy, limits=Limits(address_space=256 * MiB))
    assert err.value.returncode != 0
    assert isinstance(err.value, ToolLimitExceeded) or "MemoryError" in err.value.stderr


def test_cpu_limit_kills_a_spinning_child() -> None:
    with pytest.raises(ToolLimitExceeded) as err:
        SubprocessRunner().run(
            [sys.executable, "-c", "while True: pass"], limits=Limits(cpu_seconds=1), timeout=30
        )
    assert err.value.reason == "resource-limit"


def test_timeout_and_missing_tool() -> None:
    runner = SubprocessRunner()
    with pytest.raises(ToolLimitExceeded) as err:
        runner.run(["sleep", "5"], timeout=0.2)
    assert err.value.reason == "timeout"
    with pytest.raises(ToolNotFound) as missing:
        runner.run(["vmdisk-no-such-tool"])
    assert missing.value.hint and "apt-get install" in missing.value.hint


def test_failure_carries_redacted_argv_and_stderr_and_counts_calls() -> None:
    runner = SubprocessRunner()
    with pytest.raises(ToolError) as err:
        runner.run(["sh", "-c", "echo boom >&2; exit 3", Secret("hunter2")])
    assert err.value.returncode == 3 and "boom" in err.value.stderr
    assert "hunter2" not in " ".join(err.value.argv) and "****" in err.value.argv
    assert runner.calls == 1
    assert runner.run(["sh", "-c", "echo $LC_ALL"]).text.strip() == "C"


def test_qemu_img_verbs_on_real_files(tmp_path: Path) -> None:
    q = QemuImg(SubprocessRunner(), LIMITS)
    base = tmp_path / "base.raw"
    base.write_bytes(b"\x11" * MiB)
    overlay = tmp_path / "disk"
    q.create(
        overlay, "qcow2", 64 * MiB, backing_file=base, backing_format="raw", cluster_size=65536
    )
    info = q.info(overlay, "qcow2")
    assert (
        info.format,
        info.virtual_size,
        info.backing_file,
        info.backing_format,
        info.cluster_size,
    ) == ("qcow2", 64 * MiB, str(base), "raw", 65536)
    assert qemu_info(overlay, "qcow2")["backing-filename-format"] == "raw"
    q.resize(overlay, "qcow2", 128 * MiB)
    assert q.info(overlay, "qcow2").virtual_size == 128 * MiB
    assert q.check(overlay, "qcow2").ok
    out = tmp_path / "flat.raw"
    q.convert(overlay, "qcow2", out, "raw", cache_mode="writeback")
    assert out.stat().st_size == 128 * MiB
    with open(out, "rb") as fh:
        assert fh.read(MiB) == b"\x11" * MiB
    flat = tmp_path / "flat2.raw"
    q.create(flat, "raw", MiB)
    assert sha256(flat) == sha256(tmp_path / "flat2.raw")


def test_info_with_wrong_format_is_an_error_not_a_guess(tmp_path: Path) -> None:
    q = QemuImg(SubprocessRunner(), LIMITS)
    raw = tmp_path / "r.raw"
    raw.write_bytes(b"\0" * MiB)
    with pytest.raises(ToolError):
        q.info(raw, "qcow2")
