"""librados/librbd through their Python bindings (Debian's python3-rados/python3-rbd).

A small typed surface over the bindings: connect, list, create, write, snapshot, clone,
resize, remove. Nothing here parses `rbd` command output.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from vmdisk.errors import BackendError, ToolNotFound
from vmdisk.fsutil import data_extents

CHUNK = 4 * 1024 * 1024


def _bindings() -> tuple[ModuleType, ModuleType]:
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
    """One connection to a Ceph cluster; use as a context manager."""

    def __init__(self, conf: Path | None, user: str | None, timeout: int = 20) -> None:
        self.conf = conf
        self.user = user
        self.timeout = timeout
        self._rados: Any = None

    def __enter__(self) -> Cluster:
        rados, _ = _bindings()
        kwargs: dict[str, Any] = {"conffile": str(self.conf) if self.conf else ""}
        if self.user:
            kwargs["rados_id"] = self.user
        cluster = rados.Rados(**kwargs)
        cluster.conf_set("client_mount_timeout", str(self.timeout))
        cluster.conf_set("rados_mon_op_timeout", str(self.timeout))
        cluster.conf_set("rados_osd_op_timeout", str(self.timeout))
        try:
            cluster.connect(timeout=self.timeout)
        except rados.Error as exc:
            raise BackendError(
                f"cannot connect to Ceph ({self.conf}): {exc}", reason="ceph-unavailable"
            ) from exc
        self._rados = cluster
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rados is not None:
            self._rados.shutdown()
            self._rados = None

    @property
    def fsid(self) -> str:
        return str(self._rados.get_fsid())

    @contextlib.contextmanager
    def pool(self, name: str) -> Iterator[Any]:
        rados, _ = _bindings()
        try:
            ioctx = self._rados.open_ioctx(name)
        except rados.ObjectNotFound as exc:
            raise BackendError(
                f"Ceph pool {name!r} does not exist",
                reason="pool-not-found",
                hint=f"ceph osd pool create {name} && rbd pool init {name}",
            ) from exc
        try:
            yield ioctx
        finally:
            ioctx.close()


class Pool:
    """RBD operations in one pool."""

    def __init__(self, cluster: Cluster, ioctx: Any, name: str) -> None:
        self.cluster = cluster
        self.ioctx = ioctx
        self.name = name
        _, self._rbd = _bindings()

    def exists(self, image: str) -> bool:
        try:
            with self._rbd.Image(self.ioctx, image, read_only=True):
                return True
        except self._rbd.ImageNotFound:
            return False

    def names(self) -> list[str]:
        return list(self._rbd.RBD().list(self.ioctx))

    def info(self, image: str) -> RbdImageInfo:
        with self._rbd.Image(self.ioctx, image, read_only=True) as img:
            try:
                parent = img.get_parent_image_spec()
                spec = f"{parent['pool_name']}/{parent['image_name']}@{parent['snap_name']}"
            except self._rbd.ImageNotFound:
                spec = None
            return RbdImageInfo(self.name, image, img.size(), spec)

    def create(self, image: str, size: int) -> None:
        self._rbd.RBD().create(
            self.ioctx, image, size, old_format=False, features=self._rbd.RBD_FEATURE_LAYERING
        )

    def write_file(self, image: str, source: Path) -> None:
        """Copy a local raw file's data extents into an image (holes stay unallocated)."""
        with open(source, "rb") as fh, self._rbd.Image(self.ioctx, image) as img:
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
        with self._rbd.Image(self.ioctx, image) as img:
            img.create_snap(snap)
            img.protect_snap(snap)

    def clone_from(self, parent_ioctx: Any, parent: str, snap: str, child: str) -> None:
        self._rbd.RBD().clone(
            parent_ioctx, parent, snap, self.ioctx, child, features=self._rbd.RBD_FEATURE_LAYERING
        )

    def resize(self, image: str, size: int) -> None:
        with self._rbd.Image(self.ioctx, image) as img:
            if size > img.size():
                img.resize(size)

    def remove(self, image: str) -> None:
        with contextlib.suppress(self._rbd.ImageNotFound):
            self._rbd.RBD().remove(self.ioctx, image)

    def read(self, image: str, offset: int, length: int) -> bytes:
        with self._rbd.Image(self.ioctx, image, read_only=True) as img:
            return bytes(img.read(offset, length))


def parse_rbd_url(url: str) -> tuple[str, str, str, str] | None:
    """rbd://<fsid>/<pool>/<image>/<snap> -> its four parts, else None."""
    if not url.startswith("rbd://"):
        return None
    parts = url[len("rbd://") :].split("/")
    if len(parts) != 4 or not all(parts):
        return None
    return parts[0], parts[1], parts[2], parts[3]
