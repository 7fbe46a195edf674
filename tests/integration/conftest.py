"""Session fixtures shared by the integration tests that boot guests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest import Guest, build_guest


@pytest.fixture(scope="session")
def public_tmp() -> Iterator[Path]:
    """World-readable: libvirt runs qemu as libvirt-qemu, which cannot enter pytest's tmp."""
    path = Path(tempfile.mkdtemp(prefix="vmdisk-tests-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def guest(public_tmp: Path) -> Guest:
    """The tiny test guest, built once per session."""
    return build_guest(public_tmp / "guest")
