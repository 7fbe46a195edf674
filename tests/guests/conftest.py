"""The `guest` tier boots a real Debian guest under TCG: minutes, so never in the default run.

pyproject's testpaths leave tests/guests out of a bare `pytest`; a wider run that still reaches
these tests (`pytest tests`) skips them unless VMDISK_GUEST_TESTS=1 or tests/guests (or one of
its files) is named on the command line.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent.resolve()


def _named_explicitly(config: pytest.Config) -> bool:
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = os.environ.get("VMDISK_GUEST_TESTS") == "1" or _named_explicitly(config)
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if HERE not in path.parents:
            continue
        item.add_marker(pytest.mark.guest)
        if not wanted:
            item.add_marker(
                pytest.mark.skip(reason="boots a Debian guest: set VMDISK_GUEST_TESTS=1")
            )
