"""librados/librbd through their Python bindings (Debian's python3-rados/python3-rbd).

A small typed surface over the bindings: connect, list, create, write, snapshot, clone,
resize, rename, remove. Nothing here parses `rbd` command output. The bindings' exceptions end
here: every call is wrapped by `translated`, which turns them, by librados' errno, into the
error tree (CephError and kin, naming pool and image), so no caller imports rados or rbd.
"""

from __future__ import annotations

import configparser
import contextlib
import errno as E
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmdisk.errors import (
    CephError,
    CephUnavailable,
    InsufficientSpace,
    PoolNotFound,
    RbdImageNotFound,
    ToolNotFound,
)
from vmdisk.fsutil import data_extents

FSID_POLLS, FSID_POLL_INTERVAL = 40, 0.05  # the all-zero fsid: ask again for 2 s

CHUNK = 4 * 1024 * 1024
_UNAVAILABLE = frozenset({E.ETIMEDOUT, E.ESHUTDOWN, E.ENOTCONN, E.ECONNREFUSED, E.EINTR})
_DENIED = frozenset({E.EACCES, E.EPERM})
_NO_SPACE = frozenset({E.ENOSPC, E.EDQUOT})
_BUSY = frozenset({E.EBUSY, E.ENOTEMPTY})


def _bindings() -> tuple[Any, Any]:
    try:
        import rados
        import rbd
    except ImportError as exc:
        raise ToolNotFound(
            "the librbd/librados Python bindings are not importable",
            hint="apt-get install -y python3-rbd python3-rados, then "
            "scripts/link-system-bindings VENV for a virtual environment",
            reason="tool-not-found",
        ) from exc
    return rados, rbd


def translate(
    exc: BaseException, what: str, *, pool: str | None = None, image: str | None = None
) -> CephError | InsufficientSpace:
    """A rados/rbd exception as our error, by its errno (every binding error carries one).

    `what` is the operation in the infinitive ("clone", "open"), for "cannot clone vms/x: ...".
    """
    code = getattr(exc, "errno", None)
    spec = "/".join(p for p in (pool, image) if p) or "the cluster"
    detail = f"cannot {what} {spec}: {exc}"
    if code in _NO_SPACE:
        return InsufficientSpace(f"{detail} (the pool is full or over quota)", reason="no-space")
    cls, message, reason, hint = CephError, detail, "ceph-error", None
    if code == E.ENOENT and image is not None:
        cls, reason = RbdImageNotFound, "rbd-image-not-found"
        message = f"RBD image {spec} does not exist (while trying to {what} it)"
    elif code == E.ENOENT and pool is not None:
        cls, reason = PoolNotFound, "pool-not-found"
        message = f"Ceph pool {pool!r} does not exist"
        hint = f"ceph osd pool create {pool} && rbd pool init {pool}"
    elif code in _UNAVAILABLE:
        cls, reason = CephUnavailable, "ceph-unavailable"
    elif code in _DENIED:
        reason = "permission-denied"
        hint = "check the cephx capabilities of [libvirt] rbd_user on this pool"
    elif code == E.EEXIST:
        reason = "rbd-image-exists"
    elif code in _BUSY:
        reason = "rbd-image-busy"
    return cls(message, pool=pool, image=image, errno=code, hint=hint, reason=reason)


@contextlib.contextmanager
def translated(
    errors: tuple[type[BaseException], ...],
    what: str,
    *,
    pool: str | None = None,
    image: str | None = None,
) -> Iterator[None]:
    """Raise `translate(exc)` for any of the bindings' `errors` raised inside the block."""
    try:
        yield
    except errors as exc:
        raise translate(exc, what, pool=pool, image=image) from exc


@dataclass(frozen=True, slots=True)
class RbdImageInfo:
    pool: str
    name: str
    size: int
    parent: str | None  # pool/image@snap


def monitors(conf: Path) -> tuple[tuple[str, int], ...]:
    """`mon host` of a ceph.conf as (host, port) pairs, for libvirt's <host> elements."""
    parser = configparser.ConfigParser(strict=False)
    parser.read(conf)
    raw = ""
    for section in ("global", "client"):
        for key in ("mon host", "mon_host"):
            if parser.has_option(section, key):
                raw = parser.get(section, key)
    return parse_mon_host(raw)


def parse_mon_host(raw: str) -> tuple[tuple[str, int], ...]:
    """Ceph's mon host forms: `a,b`, `a:6789`, `v1:a:6789/0`, `[v2:a:3300,v1:a:6789]`.

    Per monitor, the v1 address wins when both are listed (every librbd speaks it).
    """
    found: dict[str, tuple[int, bool]] = {}
    for token in re.split(r"[,\s\[\]]+", raw):
        if not token:
            continue
        version = token[:3] if token[:3] in ("v1:", "v2:") else ""
        addr = token[len(version) :].split("/", 1)[0]
        host, sep, port = addr.rpartition(":")
        if not sep or not port.isdigit():
            host, port = addr, "6789"
        if not host:
            continue
        v1 = version != "v2:"
        if host not in found or (v1 and not found[host][1]):
            found[host] = (int(port), v1)
    return tuple((host, port) for host, (port, _) in found.items())


class Cluster:
    """One connection to a Ceph cluster; use as a context manager.

    `bindings` is (rados, rbd); tests hand in fakes, everyone else the real modules.
    """

    def __init__(
        self,
        conf: Path | None,
        user: str | None,
        timeout: int = 20,
        *,
        bindings: tuple[Any, Any] | None = None,
    ) -> None:
        self.conf = conf
        self.user = user
        self.timeout = timeout
        self._bindings = bindings
        self._rados: Any = None

    @property
    def bindings(self) -> tuple[Any, Any]:
        if self._bindings is None:
            self._bindings = _bindings()
        return self._bindings

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """The bindings' base exceptions: what `translated` catches."""
        rados, rbd = self.bindings
        return (rados.Error, rbd.Error)

    def __enter__(self) -> Cluster:
        rados, _ = self.bindings
        kwargs: dict[str, Any] = {"conffile": str(self.conf) if self.conf else ""}
        if self.user:
            kwargs["rados_id"] = self.user
        with translated(self.errors, "configure a connection to"):
            cluster = rados.Rados(**kwargs)
            cluster.conf_set("client_mount_timeout", str(self.timeout))
            cluster.conf_set("rados_mon_op_timeout", str(self.timeout))
            cluster.conf_set("rados_osd_op_timeout", str(self.timeout))
        try:
            cluster.connect(timeout=self.timeout)
        except self.errors as exc:
            raise CephUnavailable(
                f"cannot connect to Ceph ({self.conf}): {exc}",
                reason="ceph-unavailable",
                errno=getattr(exc, "errno", None),
            ) from exc
        self._rados = cluster
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rados is not None:
            with translated(self.errors, "disconnect from"):
                self._rados.shutdown()
            self._rados = None

    @property
    def fsid(self) -> str:
        """The cluster's fsid. Right after connecting, librados has been seen (under load)
        to answer the all-zero fsid before the monitor map arrives; a zero fsid would make a
        Glance image in this very cluster look foreign (downloaded instead of cloned), so it is
        asked again for up to two seconds."""
        with translated(self.errors, "read the fsid of"):
            value = str(self._rados.get_fsid())
            for _ in range(FSID_POLLS):
                if value.strip("0-"):
                    break
                time.sleep(FSID_POLL_INTERVAL)
                value = str(self._rados.get_fsid())
            return value

    @contextlib.contextmanager
    def pool(self, name: str) -> Iterator[Any]:
        with translated(self.errors, "open", pool=name):
            ioctx = self._rados.open_ioctx(name)
        try:
            yield ioctx
        finally:
            ioctx.close()


class Pool:
    """RBD operations in one pool; every failure leaves as a CephError naming pool and image."""

    def __init__(self, cluster: Cluster, ioctx: Any, name: str) -> None:
        self.cluster = cluster
        self.ioctx = ioctx
        self.name = name
        _, self._rbd = cluster.bindings

    def _on(self, what: str, image: str | None = None) -> contextlib.AbstractContextManager[None]:
        return translated(self.cluster.errors, what, pool=self.name, image=image)

    def exists(self, image: str) -> bool:
        with self._on("open", image):
            try:
                with self._rbd.Image(self.ioctx, image, read_only=True):
                    return True
            except self._rbd.ImageNotFound:
                return False

    def names(self) -> list[str]:
        with self._on("list"):
            return list(self._rbd.RBD().list(self.ioctx))

    def info(self, image: str) -> RbdImageInfo:
        with self._on("describe", image), self._rbd.Image(self.ioctx, image, read_only=True) as img:
            try:
                parent = img.get_parent_image_spec()
                spec = f"{parent['pool_name']}/{parent['image_name']}@{parent['snap_name']}"
            except self._rbd.ImageNotFound:
                spec = None
            return RbdImageInfo(self.name, image, img.size(), spec)

    def create(self, image: str, size: int) -> None:
        with self._on("create", image):
            self._rbd.RBD().create(
                self.ioctx, image, size, old_format=False, features=self._rbd.RBD_FEATURE_LAYERING
            )

    def write_file(self, image: str, source: Path) -> None:
        """Copy a local raw file's data extents into an image (holes stay unallocated)."""
        with (
            self._on("write", image),
            open(source, "rb") as fh,
            self._rbd.Image(self.ioctx, image) as img,
        ):
            fd = fh.fileno()
            size = os.fstat(fd).st_size
            for start, end in data_extents(fd, 0, size):
                pos = start
                while pos < end:
                    data = os.pread(fd, min(CHUNK, end - pos), pos)
                    if not data:
                        break
                    img.write(data, pos)
                    pos += len(data)
            img.flush()

    def snapshot_protected(self, image: str, snap: str) -> None:
        with self._on("snapshot", image), self._rbd.Image(self.ioctx, image) as img:
            img.create_snap(snap)
            img.protect_snap(snap)

    def clone_from(self, parent_ioctx: Any, parent: str, snap: str, child: str) -> None:
        """Clone `parent@snap` (in `parent_ioctx`'s pool) as `child` here.

        A missing parent reads as the parent's ENOENT; the error names the child's pool.
        """
        with self._on(f"clone {parent}@{snap} as", child):
            self._rbd.RBD().clone(
                parent_ioctx,
                parent,
                snap,
                self.ioctx,
                child,
                features=self._rbd.RBD_FEATURE_LAYERING,
            )

    def resize(self, image: str, size: int) -> None:
        with self._on("resize", image), self._rbd.Image(self.ioctx, image) as img:
            if size > img.size():
                img.resize(size)

    def rename(self, image: str, new_name: str) -> None:
        with self._on(f"rename to {new_name}", image):
            self._rbd.RBD().rename(self.ioctx, image, new_name)

    def remove(self, image: str) -> None:
        """Remove an image; one already gone is not an error."""
        with self._on("remove", image), contextlib.suppress(self._rbd.ImageNotFound):
            self._rbd.RBD().remove(self.ioctx, image)

    def remove_with_snaps(self, image: str) -> None:
        """Unprotect and remove every snapshot, then the image (a half-imported base)."""
        with self._on("remove the snapshots of", image), self._rbd.Image(self.ioctx, image) as img:
            for snap in list(img.list_snaps()):
                if img.is_protected_snap(snap["name"]):
                    img.unprotect_snap(snap["name"])
                img.remove_snap(snap["name"])
        self.remove(image)

    def read(self, image: str, offset: int, length: int) -> bytes:
        with self._on("read", image), self._rbd.Image(self.ioctx, image, read_only=True) as img:
            return bytes(img.read(offset, length))


def parse_rbd_url(url: str) -> tuple[str, str, str, str] | None:
    """rbd://<fsid>/<pool>/<image>/<snap> -> its four parts, else None."""
    if not url.startswith("rbd://"):
        return None
    parts = url[len("rbd://") :].split("/")
    if len(parts) != 4 or not all(parts):
        return None
    return parts[0], parts[1], parts[2], parts[3]
