"""Ceph RBD: every disk an RBD image `<uuid>_<disk>` in images_rbd_pool, cloned, not copied.

Root disk: when the image is Glance's and lives in RBD in the same cluster (`rbd://<fsid>/
<pool>/<image>/<snap>`, raw), it is cloned from Glance's protected snapshot and nothing is
downloaded. Otherwise the image comes through the intake into `_base` and is imported into the
pool *once* as `vmdisk_base_<sha1>` with a protected snapshot, and every instance is a clone of
it: one import per image instead of Nova's `rbd import` per instance. Ephemeral and swap
templates are imported and cloned the same way, so their labels come along. The config drive is
built locally and imported as `<uuid>_disk.config`.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from vmdisk.backends.base import DiskBackend
from vmdisk.errors import FlavorDiskSmallerThanImage, InternalError, InvalidRequest
from vmdisk.imagecache.locks import Locks
from vmdisk.imagecache.store import CachedImage
from vmdisk.imagecache.templates import TemplateCache
from vmdisk.model import BackendName, DiskPlan, DiskRole
from vmdisk.tools.ceph import Cluster, Pool, parse_rbd_url
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import Runner
from vmdisk.units import format_size

SNAP = "snap"
BASE_PREFIX = "vmdisk_base_"


@dataclass(frozen=True, slots=True)
class RbdConfig:
    pool: str = "vms"
    conf: Path | None = None
    user: str | None = None
    secret_uuid: str | None = None

    def cluster(self) -> Cluster:
        return Cluster(self.conf, self.user)


class RbdBackend(DiskBackend):
    name = BackendName.RBD

    def __init__(
        self,
        qemu: QemuImg,
        runner: Runner,
        templates: TemplateCache,
        config: RbdConfig,
        locks: Locks,
        location: str | None = None,
    ) -> None:
        super().__init__(qemu, runner, templates)
        self.config = config
        self.locks = locks
        self.location = location  # Glance's rbd:// location, when there is one
        self._cluster: Cluster | None = None
        self._guard = threading.Lock()

    def cluster(self) -> Cluster:
        """One connection for the whole create (connecting costs more than a clone)."""
        with self._guard:
            if self._cluster is None:
                self._cluster = self.config.cluster().__enter__()
            return self._cluster

    def close(self) -> None:
        with self._guard:
            if self._cluster is not None:
                self._cluster.__exit__(None, None, None)
                self._cluster = None

    def ensure_disk(self, disk: DiskPlan, target: Path, base: CachedImage | None) -> None:
        if disk.rbd is None:
            super().ensure_disk(disk, target, base)
            return
        if disk.role is not DiskRole.ROOT:
            self.create_blank(disk, target)
        elif base is None:
            self.clone_from_glance(disk)
        else:
            self.create_from_base(disk, target, base)

    def clone_source(self, fsid: str) -> tuple[str, str, str] | None:
        """(pool, image, snap) of a cloneable Glance location in this cluster, else None."""
        parsed = parse_rbd_url(self.location or "")
        if parsed is None or parsed[0] != fsid:
            return None
        return parsed[1], parsed[2], parsed[3]

    def can_clone(self) -> bool:
        if not self.location:
            return False
        return self.clone_source(self.cluster().fsid) is not None

    def clone_from_glance(self, disk: DiskPlan) -> None:
        cluster = self.cluster()
        with cluster.pool(self.config.pool) as ioctx:
            source = self.clone_source(cluster.fsid)
            if source is None:
                raise InvalidRequest("the Glance image is not in this Ceph cluster")
            gpool, gimage, snap = source
            with cluster.pool(gpool) as gctx:
                parent = Pool(cluster, gctx, gpool)
                size = parent.info(gimage).size
                _verify_size(size, disk.size)
                pool = Pool(cluster, ioctx, self.config.pool)
                pool.clone_from(gctx, gimage, snap, _image(disk))
                if disk.size:
                    pool.resize(_image(disk), disk.size)

    def create_from_base(self, disk: DiskPlan, target: Path, base: CachedImage) -> None:
        _verify_size(base.record.virtual_size, disk.size)
        self._clone_local(disk, base.name, base.path)

    def create_blank(self, disk: DiskPlan, target: Path) -> None:
        if disk.base is None or disk.size is None:
            raise ValueError(f"{disk.name} needs a template name and a size")
        make = lambda tmp: self.format_blank(disk, tmp)  # noqa: E731
        with self.templates.using(disk.base, disk.size, make) as template:
            self._clone_local(disk, disk.base, template)

    def adopt(self, disk: DiskPlan, local: Path) -> None:
        """Import a file made locally (the config drive) as the disk's image; remove the file."""
        cluster = self.cluster()
        with cluster.pool(self.config.pool) as ioctx:
            pool = Pool(cluster, ioctx, self.config.pool)
            pool.remove(_image(disk))
            pool.create(_image(disk), local.stat().st_size)
            pool.write_file(_image(disk), local)
        local.unlink()

    def _clone_local(self, disk: DiskPlan, name: str, path: Path) -> None:
        cluster = self.cluster()
        with cluster.pool(self.config.pool) as ioctx:
            pool = Pool(cluster, ioctx, self.config.pool)
            parent = self._import_once(pool, name, path)
            pool.clone_from(ioctx, parent, SNAP, _image(disk))
            if disk.size:
                pool.resize(_image(disk), disk.size)

    def _import_once(self, pool: Pool, name: str, path: Path) -> str:
        """`vmdisk_base_<name>@snap` in the pool, imported and protected once per cluster.

        Imported under a temporary name, snapshotted and protected, then renamed: a crash
        never leaves a parent that looks complete.
        """
        final = f"{BASE_PREFIX}{name}"
        if pool.exists(final):
            return final
        with self.locks.exclusive(f"rbd-{name}"):
            if pool.exists(final):
                return final
            for stale in pool.names():
                if stale.startswith(f"{final}.tmp-"):
                    with contextlib.suppress(Exception):
                        _remove_with_snaps(pool, stale)
            tmp = f"{final}.tmp-{secrets.token_hex(4)}"
            pool.create(tmp, path.stat().st_size)
            try:
                pool.write_file(tmp, path)
                pool.snapshot_protected(tmp, SNAP)
                pool.rename(tmp, final)
            except BaseException:
                with contextlib.suppress(Exception):
                    _remove_with_snaps(pool, tmp)
                raise
        return final

    def resize(self, path: Path, fmt: str, size: int) -> None:
        raise InternalError("RBD disks are resized by image name (resize_image)")

    def resize_image(self, image: str, size: int) -> None:
        pool_name, name = image.split("/", 1)
        with self.config.cluster() as cluster, cluster.pool(pool_name) as ioctx:
            Pool(cluster, ioctx, pool_name).resize(name, size)


def _image(disk: DiskPlan) -> str:
    if disk.rbd is None:
        raise ValueError(f"{disk.name} is not an RBD disk")
    return disk.rbd.split("/", 1)[1]


def _verify_size(image_size: int, disk_size: int | None) -> None:
    if disk_size is not None and image_size > disk_size:
        raise FlavorDiskSmallerThanImage(
            f"the image's size {format_size(image_size)} is larger than the flavor's root disk "
            f"{format_size(disk_size)}",
            reason="flavor-too-small",
        )


def _remove_with_snaps(pool: Pool, image: str) -> None:
    pool.remove_with_snaps(image)


def remove_instance_images(config: RbdConfig, images: list[str]) -> None:
    """Remove an instance's RBD images; parents (bases, Glance's) are never touched."""
    if not images:
        return
    with config.cluster() as cluster:
        for spec in images:
            pool_name, name = spec.split("/", 1)
            with cluster.pool(pool_name) as ioctx:
                Pool(cluster, ioctx, pool_name).remove(name)


def describe_images(config: RbdConfig, images: list[str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    with config.cluster() as cluster:
        for spec in images:
            pool_name, name = spec.split("/", 1)
            with cluster.pool(pool_name) as ioctx:
                pool = Pool(cluster, ioctx, pool_name)
                if pool.exists(name):
                    info = pool.info(name)
                    out[spec] = {"virtual_size": info.size, "parent": info.parent}
    return out
