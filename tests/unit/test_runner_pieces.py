"""The runner's parts that start nothing: redaction, error shaping, tool lookup; the KVM probe."""

from __future__ import annotations

import json
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vmdisk.errors import InsufficientSpace, ToolError, ToolLimitExceeded, ToolNotFound
from vmdisk.libvirt import probe
from vmdisk.tools import runner as rn
from vmdisk.tools.runner import CommandResult, Limits, Secret, SubprocessRunner, redact


def result(rc: int, stderr: bytes, argv: tuple[str, ...] = ("qemu-img", "info")) -> CommandResult:
    return CommandResult(argv, rc, b"", stderr, 0.1)


def test_secrets_are_redacted_from_argv_and_repr() -> None:
    argv = ["rbd", "--key", Secret("AQB=="), "import"]
    assert redact(argv) == ["rbd", "--key", "****", "import"]
    assert repr(Secret("x")) == "'****'"
    assert Secret("x") == "x"  # still the real value for the child


def test_command_result_text_replaces_bad_utf8() -> None:
    assert CommandResult(("a",), 0, b"ok \xff", b"", 0.0).text == "ok \ufffd"


def test_failure_names_the_tool_and_the_last_stderr_line() -> None:
    err = rn._failure(result(1, b"line1\nline2\nqemu-img: Could not open 'x'\n"), None)
    assert type(err) is ToolError
    assert err.message == "qemu-img failed: qemu-img: Could not open 'x'"
    assert err.returncode == 1
    assert err.argv == ["qemu-img", "info"]
    assert err.reason == "tool-failed"


def test_failure_without_stderr_reports_the_exit_code() -> None:
    assert rn._failure(result(3, b""), None).message == "qemu-img failed: exit code 3"


def test_failure_keeps_only_the_stderr_tail() -> None:
    stderr = b"\n".join(f"l{i}".encode() for i in range(20))
    err = rn._failure(result(1, stderr), None)
    assert isinstance(err, ToolError)
    assert err.stderr.splitlines() == [f"l{i}" for i in range(14, 20)]


def test_failure_out_of_space_is_insufficient_space() -> None:
    err = rn._failure(result(1, b"write failed: No space left on device"), None)
    assert isinstance(err, InsufficientSpace)
    assert err.message == "qemu-img ran out of space: write failed: No space left on device"


@pytest.mark.parametrize(
    ("rc", "stderr"),
    [(-signal.SIGKILL, b""), (-signal.SIGXCPU, b""), (1, b"Cannot allocate memory")],
)
def test_failure_under_limits_is_a_limit_error(rc: int, stderr: bytes) -> None:
    limits = Limits(address_space=1 << 30, cpu_seconds=30)
    err = rn._failure(result(rc, stderr), limits)
    assert isinstance(err, ToolLimitExceeded)
    assert "address space 1073741824 bytes, cpu 30 s" in err.message
    assert err.reason == "resource-limit"


def test_a_kill_without_limits_is_a_plain_failure() -> None:
    assert type(rn._failure(result(-signal.SIGKILL, b""), None)) is ToolError


def test_limiter_with_no_limits_changes_nothing() -> None:
    import resource

    before = resource.getrlimit(resource.RLIMIT_AS)
    rn._limiter(Limits())()
    assert resource.getrlimit(resource.RLIMIT_AS) == before


def test_search_path_adds_the_sbin_directories(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/sbin")
    assert rn._search_path() == "/usr/bin:/sbin:/usr/sbin"
    monkeypatch.setenv("PATH", "")
    assert rn._search_path() == "/usr/sbin:/sbin"


def test_which_and_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "mytool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert rn.which("mytool") == tool
    assert rn.which("vmdisk-no-such-tool") is None
    runner = SubprocessRunner()
    assert runner._resolve("mytool") == str(tool)
    assert runner._resolve("/abs/path/tool") == "/abs/path/tool"
    with pytest.raises(ToolNotFound, match="vmdisk-no-such-tool is not installed") as err:
        runner._resolve("vmdisk-no-such-tool")
    assert err.value.hint == "install it with: apt-get install -y vmdisk-no-such-tool"
    assert err.value.reason == "tool-not-found"


@dataclass
class FakeGuest:
    banner: bytes | None
    serial: Path
    stopped: bool = False
    pid: int = 4242

    def poll(self) -> int | None:
        if self.banner is not None:
            self.serial.write_bytes(b"early console\n" + self.banner)
        return None

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def stop(self) -> None:
        self.stopped = True


@dataclass
class SpawningRunner:
    """Spawns a FakeGuest that writes `banner` to the serial file named in argv."""

    banner: bytes | None
    fail: bool = False
    calls: int = 0
    guests: list[FakeGuest] = field(default_factory=list)
    argvs: list[list[str]] = field(default_factory=list)

    def spawn(self, argv: Sequence[str], *, output: Path | None = None) -> FakeGuest:
        self.calls += 1
        self.argvs.append(list(argv))
        if self.fail:
            raise ToolError("qemu-system-x86_64 failed: no kvm")
        serial = Path(argv[argv.index("-serial") + 1].removeprefix("file:"))
        guest = FakeGuest(self.banner, serial)
        self.guests.append(guest)
        return guest

    def run(self, argv: Sequence[str], **kwargs: object) -> CommandResult:
        raise AssertionError("the probe only spawns")


def test_kvm_boots_when_the_banner_appears(tmp_path: Path) -> None:
    runner = SpawningRunner(b"Linux version 6.1")
    assert probe.kvm_boots(runner, tmp_path / "vmlinuz") is True  # type: ignore[arg-type]
    argv = runner.argvs[0]
    assert argv[:3] == ["qemu-system-x86_64", "-accel", "kvm"]
    assert argv[argv.index("-kernel") + 1] == str(tmp_path / "vmlinuz")
    assert runner.guests[0].stopped


def test_kvm_does_not_boot_when_qemu_cannot_start(tmp_path: Path) -> None:
    runner = SpawningRunner(None, fail=True)
    assert probe.kvm_boots(runner, tmp_path / "vmlinuz") is False  # type: ignore[arg-type]


def test_kvm_does_not_boot_without_a_banner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probe, "PROBE_SECONDS", 0.2)
    runner = SpawningRunner(b"")
    assert probe.kvm_boots(runner, tmp_path / "vmlinuz") is False  # type: ignore[arg-type]
    assert runner.guests[0].stopped


@pytest.mark.parametrize("setting", ["kvm", "qemu"])
def test_virt_type_setting_wins(tmp_path: Path, setting: str) -> None:
    runner = SpawningRunner(None, fail=True)
    assert probe.virt_type(runner, setting, tmp_path) == setting  # type: ignore[arg-type]
    assert runner.calls == 0


def test_virt_type_probe_is_cached_per_kernel(tmp_path: Path) -> None:
    """Whatever this host answers, a second call reads the cache and spawns nothing."""
    runner = SpawningRunner(b"Linux version")
    first = probe.virt_type(runner, "auto", tmp_path)  # type: ignore[arg-type]
    assert first in ("kvm", "qemu")
    spawned = runner.calls
    again = SpawningRunner(None, fail=True)
    assert probe.virt_type(again, "auto", tmp_path) == first  # type: ignore[arg-type]
    assert again.calls == 0
    cache = tmp_path / "virt-type.json"
    if spawned:
        assert json.loads(cache.read_text())["virt_type"] == "kvm"
