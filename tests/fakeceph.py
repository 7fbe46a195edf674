"""A FAKE of the librados/librbd Python bindings (`rados`, `rbd`), in memory, for unit tests.

Only what vmdisk.tools.ceph calls exists, with the bindings' names: exception classes are
attributes of the fake modules (`rbd.ImageNotFound`, `rados.ObjectNotFound`, ...) and subclass
each module's fake `Error`, so code translating binding errors sees the same names. Rules that
matter to vmdisk are kept: a clone needs a protected snapshot, a protected snapshot with
children cannot be unprotected, an image with snapshots cannot be removed.

Install it with `monkeypatch.setitem(sys.modules, "rados", ceph.rados)` (and "rbd"); the code
under test imports the bindings lazily, so it then gets this fake.
"""

from __future__ import annotations

import errno as E
import functools
import types
from dataclasses import dataclass, field
from typing import Any

RBD_FEATURE_LAYERING = 1


class RadosError(Exception):
    """The fake `rados.Error`. Like the real bindings' errors, each carries an errno."""

    errno: int | None = None


class RadosObjectNotFound(RadosError):
    """The fake `rados.ObjectNotFound` (e.g. a missing pool)."""

    errno = E.ENOENT


class RbdError(Exception):
    """The fake `rbd.Error`."""

    errno: int | None = None


class ImageNotFound(RbdError):
    errno = E.ENOENT


class ImageExists(RbdError):
    errno = E.EEXIST


class ImageBusy(RbdError):
    errno = E.EBUSY


class ImageHasSnapshots(RbdError):
    errno = E.ENOTEMPTY


class InvalidArgument(RbdError):
    errno = E.EINVAL


class ReadOnlyImage(RbdError):
    errno = E.EROFS


class RbdIOError(RbdError):
    """The fake `rbd.IOError`."""

    errno = E.EIO


# The bindings' own class names, for code or messages that go by type(exc).__name__.
for _cls, _module, _real in (
    (RadosError, "rados", "Error"),
    (RadosObjectNotFound, "rados", "ObjectNotFound"),
    (RbdError, "rbd", "Error"),
    (RbdIOError, "rbd", "IOError"),
):
    _cls.__name__ = _cls.__qualname__ = _real
    _cls.__module__ = _module


@dataclass
class FakeImage:
    """One image's state: sparse data as written extents, snapshots, its parent spec."""

    size: int
    extents: dict[int, bytes] = field(default_factory=dict)
    snaps: dict[str, bool] = field(default_factory=dict)  # name -> protected
    parent: tuple[str, str, str] | None = None  # (pool, image, snap)

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray(max(0, min(length, self.size - offset)))
        for start, data in self.extents.items():
            lo, hi = max(start, offset), min(start + len(data), offset + len(out))
            if lo < hi:
                out[lo - offset : hi - offset] = data[lo - start : hi - start]
        return bytes(out)


@dataclass
class FakeCeph:
    """A whole fake cluster: pools of images, plus counters and knobs for the tests."""

    fsid: str = "00000000-fake-ceph-0000-000000000000"
    pools: dict[str, dict[str, FakeImage]] = field(default_factory=dict)
    writes: list[tuple[str, str, int, int]] = field(default_factory=list)  # pool, image, off, n
    connects: list[dict[str, Any]] = field(default_factory=list)
    shutdowns: int = 0
    fail_writes: bool = False
    refuse_connect: bool = False
    rados: types.ModuleType = field(init=False)
    rbd: types.ModuleType = field(init=False)

    def __post_init__(self) -> None:
        self.rados = types.ModuleType("rados", "FAKE rados bindings (tests/fakeceph.py)")
        self.rados.Error = RadosError  # type: ignore[attr-defined]
        self.rados.ObjectNotFound = RadosObjectNotFound  # type: ignore[attr-defined]
        self.rados.Rados = functools.partial(FakeRados, self)  # type: ignore[attr-defined]
        self.rbd = types.ModuleType("rbd", "FAKE rbd bindings (tests/fakeceph.py)")
        for name, value in {
            "Error": RbdError,
            "ImageNotFound": ImageNotFound,
            "ImageExists": ImageExists,
            "ImageBusy": ImageBusy,
            "ImageHasSnapshots": ImageHasSnapshots,
            "InvalidArgument": InvalidArgument,
            "ReadOnlyImage": ReadOnlyImage,
            "IOError": RbdIOError,
            "RBD": FakeRBD,
            "Image": FakeRbdImage,
            "RBD_FEATURE_LAYERING": RBD_FEATURE_LAYERING,
        }.items():
            setattr(self.rbd, name, value)

    def pool(self, name: str) -> dict[str, FakeImage]:
        """A pool's images, creating the pool (like `ceph osd pool create`)."""
        return self.pools.setdefault(name, {})

    def children(self, pool: str, image: str, snap: str) -> list[str]:
        return [
            f"{p}/{n}"
            for p, images in self.pools.items()
            for n, img in images.items()
            if img.parent == (pool, image, snap)
        ]

    def writes_to(self, prefix: str) -> int:
        return sum(1 for _, image, _, _ in self.writes if image.startswith(prefix))


class FakeIoctx:
    def __init__(self, ceph: FakeCeph, name: str) -> None:
        self.ceph = ceph
        self.name = name
        self.closed = False

    @property
    def images(self) -> dict[str, FakeImage]:
        return self.ceph.pools[self.name]

    def close(self) -> None:
        self.closed = True


class FakeRados:
    def __init__(self, ceph: FakeCeph, conffile: str = "", rados_id: str | None = None) -> None:
        self.ceph = ceph
        self.conffile = conffile
        self.rados_id = rados_id
        self.conf: dict[str, str] = {}

    def conf_set(self, key: str, value: str) -> None:
        self.conf[key] = value

    def connect(self, timeout: int = 0) -> None:
        if self.ceph.refuse_connect:
            raise RadosError("fake: monitors unreachable")
        self.ceph.connects.append(
            {"conffile": self.conffile, "rados_id": self.rados_id, "timeout": timeout}
        )

    def get_fsid(self) -> str:
        return self.ceph.fsid

    def open_ioctx(self, name: str) -> FakeIoctx:
        if name not in self.ceph.pools:
            raise RadosObjectNotFound(f"fake: no pool {name}")
        return FakeIoctx(self.ceph, name)

    def shutdown(self) -> None:
        self.ceph.shutdowns += 1


class FakeRBD:
    def list(self, ioctx: FakeIoctx) -> list[str]:
        return sorted(ioctx.images)

    def create(self, ioctx: FakeIoctx, name: str, size: int, **_kw: object) -> None:
        if name in ioctx.images:
            raise ImageExists(name)
        ioctx.images[name] = FakeImage(size)

    def clone(
        self,
        p_ioctx: FakeIoctx,
        p_name: str,
        p_snap: str,
        c_ioctx: FakeIoctx,
        c_name: str,
        **_kw: object,
    ) -> None:
        parent = _image(p_ioctx, p_name)
        if not parent.snaps.get(p_snap, False):
            raise InvalidArgument(f"fake: {p_name}@{p_snap} is not a protected snapshot")
        if c_name in c_ioctx.images:
            raise ImageExists(c_name)
        c_ioctx.images[c_name] = FakeImage(
            parent.size, dict(parent.extents), {}, (p_ioctx.name, p_name, p_snap)
        )

    def remove(self, ioctx: FakeIoctx, name: str) -> None:
        if _image(ioctx, name).snaps:
            raise ImageHasSnapshots(name)
        del ioctx.images[name]

    def rename(self, ioctx: FakeIoctx, src: str, dest: str) -> None:
        if dest in ioctx.images:
            raise ImageExists(dest)
        ioctx.images[dest] = ioctx.images.pop(_name(ioctx, src))
        for images in ioctx.ceph.pools.values():
            for img in images.values():
                if img.parent and img.parent[:2] == (ioctx.name, src):
                    img.parent = (ioctx.name, dest, img.parent[2])


class FakeRbdImage:
    def __init__(self, ioctx: FakeIoctx, name: str, read_only: bool = False) -> None:
        self.ioctx = ioctx
        self.name = name
        self.read_only = read_only
        self.state = _image(ioctx, name)

    def __enter__(self) -> FakeRbdImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        return None

    def size(self) -> int:
        return self.state.size

    def resize(self, size: int) -> None:
        self._writable()
        self.state.size = size

    def write(self, data: bytes, offset: int) -> int:
        self._writable()
        if self.ioctx.ceph.fail_writes:
            raise RbdIOError("fake: write failed")
        if offset + len(data) > self.state.size:
            raise InvalidArgument("fake: write past the end")
        self.state.extents[offset] = bytes(data)
        self.ioctx.ceph.writes.append((self.ioctx.name, self.name, offset, len(data)))
        return len(data)

    def read(self, offset: int, length: int) -> bytes:
        return self.state.read(offset, length)

    def flush(self) -> None:
        return None

    def create_snap(self, snap: str) -> None:
        self._writable()
        if snap in self.state.snaps:
            raise ImageExists(snap)
        self.state.snaps[snap] = False

    def protect_snap(self, snap: str) -> None:
        self._snap(snap)
        self.state.snaps[snap] = True

    def unprotect_snap(self, snap: str) -> None:
        self._snap(snap)
        if self.ioctx.ceph.children(self.ioctx.name, self.name, snap):
            raise ImageBusy(f"fake: {self.name}@{snap} has clones")
        self.state.snaps[snap] = False

    def is_protected_snap(self, snap: str) -> bool:
        return self._snap(snap)

    def remove_snap(self, snap: str) -> None:
        if self._snap(snap):
            raise ImageBusy(f"fake: {self.name}@{snap} is protected")
        del self.state.snaps[snap]

    def list_snaps(self) -> list[dict[str, object]]:
        return [
            {"id": i, "name": s, "size": self.state.size} for i, s in enumerate(self.state.snaps)
        ]

    def get_parent_image_spec(self) -> dict[str, str]:
        if self.state.parent is None:
            raise ImageNotFound(f"fake: {self.name} has no parent")
        pool, image, snap = self.state.parent
        return {"pool_name": pool, "pool_namespace": "", "image_name": image, "snap_name": snap}

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnlyImage(self.name)

    def _snap(self, snap: str) -> bool:
        if snap not in self.state.snaps:
            raise ImageNotFound(f"fake: no snapshot {self.name}@{snap}")
        return self.state.snaps[snap]


def _name(ioctx: FakeIoctx, name: str) -> str:
    if name not in ioctx.images:
        raise ImageNotFound(f"fake: no image {ioctx.name}/{name}")
    return name


def _image(ioctx: FakeIoctx, name: str) -> FakeImage:
    return ioctx.images[_name(ioctx, name)]
