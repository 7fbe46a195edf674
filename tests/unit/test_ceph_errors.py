"""tools/ceph.py turns the bindings' exceptions into the error tree, by errno.

The real bindings are Debian packages; these fakes mimic their shape (an `Error` base, an
`OSError` subclass carrying `errno`) and are named as fakes.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest

from vmdisk.errors import (
    CephError,
    CephUnavailable,
    DiskMissing,
    InsufficientSpace,
    PoolNotFound,
    RbdImageNotFound,
)
from vmdisk.tools.ceph import Cluster, Pool, translate


class FakeRadosError(Exception):
    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class FakeRbdError(Exception):
    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class FakeRbdImageNotFound(FakeRbdError):
    pass


class FakeRados:
    Error = FakeRadosError


class FakeRbdApi:
    """`rbd.RBD()`: every call fails with the errno the test set."""

    fail_with = errno.EIO

    def create(self, *args: Any, **kwargs: Any) -> None:
        raise FakeRbdError("[errno] fake create", errno=self.fail_with)

    def remove(self, ioctx: Any, image: str) -> None:
        raise FakeRbdImageNotFound("[errno 2] fake: no image", errno=errno.ENOENT)


class FakeRbdImage:
    def __init__(self, ioctx: Any, name: str, read_only: bool = False) -> None:
        raise FakeRbdImageNotFound(f"[errno 2] fake: no image {name}", errno=errno.ENOENT)


class FakeRbd:
    Error = FakeRbdError
    ImageNotFound = FakeRbdImageNotFound
    RBD = FakeRbdApi
    Image = FakeRbdImage
    RBD_FEATURE_LAYERING = 1


def fake_pool() -> Pool:
    return Pool(Cluster(None, None, bindings=(FakeRados, FakeRbd)), object(), "vms")


@pytest.mark.parametrize(
    ("code", "cls", "reason"),
    [
        (errno.ETIMEDOUT, CephUnavailable, "ceph-unavailable"),
        (errno.EACCES, CephError, "permission-denied"),
        (errno.EEXIST, CephError, "rbd-image-exists"),
        (errno.EBUSY, CephError, "rbd-image-busy"),
        (errno.EIO, CephError, "ceph-error"),
        (None, CephError, "ceph-error"),
    ],
)
def test_translation_by_errno_names_pool_and_image(
    code: int | None, cls: type[CephError], reason: str
) -> None:
    error = translate(FakeRbdError("fake failure", errno=code), "clone", pool="vms", image="x")
    assert type(error) is cls and isinstance(error, CephError)
    assert error.reason == reason and error.pool == "vms" and error.image == "x"
    assert "vms/x" in error.message


def test_not_found_and_no_space() -> None:
    missing = translate(
        FakeRbdImageNotFound("gone", errno=errno.ENOENT), "open", pool="p", image="i"
    )
    assert isinstance(missing, RbdImageNotFound) and isinstance(missing, DiskMissing)
    assert missing.message == "RBD image p/i does not exist (while trying to open it)"
    pool = translate(FakeRadosError("gone", errno=errno.ENOENT), "open", pool="p")
    assert isinstance(pool, PoolNotFound) and pool.hint and "pool create p" in pool.hint
    full = translate(FakeRbdError("full", errno=errno.ENOSPC), "write", pool="p", image="i")
    assert isinstance(full, InsufficientSpace) and full.reason == "no-space"


def test_pool_operations_raise_only_the_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = fake_pool()
    assert pool.exists("nope") is False
    pool.remove("nope")  # already gone is fine
    with pytest.raises(RbdImageNotFound) as err:
        pool.info("nope")
    assert err.value.pool == "vms" and err.value.image == "nope"
    assert isinstance(err.value.__cause__, FakeRbdImageNotFound)
    monkeypatch.setattr(FakeRbdApi, "fail_with", errno.EEXIST)
    with pytest.raises(CephError, match="cannot create vms/new") as exists:
        pool.create("new", 1)
    assert exists.value.reason == "rbd-image-exists"
