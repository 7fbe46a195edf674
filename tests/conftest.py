"""Test tiers by directory (pip's way): unit tests may not start any process at all."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from vmdisk.settings import Settings, load_settings

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(HERE).parts[0]
        if tier in ("unit", "integration", "soak"):
            item.add_marker(getattr(pytest.mark, tier))


class _NoProcesses:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(
            f"unit tests must not start processes (tried {args[0] if args else kwargs}); "
            "give the code a FakeRunner or move the test to tests/integration"
        )


@pytest.fixture(autouse=True)
def _forbid_processes_in_unit_tests(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if request.node.get_closest_marker("unit"):
        monkeypatch.setattr(subprocess, "Popen", _NoProcesses)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with instances_path in tmp_path and nothing read from the machine."""
    return load_settings(None, env={}, overrides={"instances_path": str(tmp_path / "instances")})
