"""Startup: short commands import only what they use (issue 21, bench W1).

Checked with `python -X importtime` in a fresh interpreter (a process, hence this tier), so a
module imported by anything on the way (vmdisk/__init__, cli/main, a command module) is seen,
and lazy stand-ins (vmdisk/lazy.py) are not.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vmdisk.cli.main import COMMANDS

HEAVY = {"oslo_utils", "requests", "urllib3", "cryptography", "rich", "pycdlib"}


def _imported(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vmdisk", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    assert "vmdisk.cli.main" in names, result.stderr[-2000:]
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_short_commands_import_no_heavy_dependency(args: list[str]) -> None:
    assert _imported(*args) & HEAVY == set()


def test_list_on_an_empty_path_imports_no_fetch_or_image_code(tmp_path: Path) -> None:
    # rich prints the (empty) table, so list may use it; nothing that fetches or inspects.
    imported = _imported("--instances-path", str(tmp_path), "list")
    assert imported & (HEAVY - {"rich"}) == set()


def test_version_alone_skips_the_command_modules() -> None:
    names = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vmdisk", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    assert "vmdisk.cli.instances" not in names and "vmdisk.host" not in names


def test_help_lists_every_command_from_the_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vmdisk", "--help"], capture_output=True, text=True, check=True
    )
    listed = result.stdout.split("Commands:", 1)[1].split()
    for name in COMMANDS:
        assert name in listed


def _script() -> str:
    return str(Path(sys.executable).parent / "vmdisk")


def test_the_console_script_answers_version_without_click() -> None:
    fast = subprocess.run(
        [sys.executable, "-X", "importtime", _script(), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {line.rsplit("|", 1)[1].strip() for line in fast.stderr.splitlines() if "|" in line}
    assert "click" not in names and "vmdisk.cli.main" not in names
    slow = subprocess.run(
        [sys.executable, "-m", "vmdisk", "--version"], capture_output=True, text=True, check=True
    )
    assert fast.stdout == slow.stdout == "vmdisk, version " + _version() + "\n"


def test_the_console_script_runs_every_other_command_through_click(tmp_path: Path) -> None:
    result = subprocess.run(
        [_script(), "--json", "--instances-path", str(tmp_path), "list"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"
    bad = subprocess.run([_script(), "no-such-command"], check=False, capture_output=True)
    assert bad.returncode == 2


def _version() -> str:
    from vmdisk import __version__

    return __version__
