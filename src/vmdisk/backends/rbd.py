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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmdisk.backends.base import BackendDeps, DiskBackend, DiskState, verify_base_size
from vmdisk.errors import NotSupported
from vmdisk.imagecache.store import CachedImage
from vmdisk.model import (
    BackendName,
    DiskPlan,
    DiskRole,
    NetworkAuth,
    NetworkSource,
    ProvisionedDisk,
)
from vmdisk.record import DiskEntry
from vmdisk.settings import LibvirtSettings
from vmdisk.tools.ceph import Cluster, Pool, monitors, parse_rbd_url

SNAP = "snap"
BASE_PREFIX = "vmdisk_base_"
PROTOCOL = "rbd"
#: Disks that live in the pool; kernels and ramdisks stay files in the instance directory.
_ROLES = (DiskRole.ROOT, DiskRole.EPHEMERAL, DiskRole.SWAP, DiskRole.CONFIG)


@dataclass(frozen=True, slots=True)
class RbdConfig:
    pool: str = "vms"
    conf: Path | None = None
    user: str | None = None
    secret_uuid: str | None = None

    @classmethod
    def from_settings(cls, lib: LibvirtSettings) -> RbdConfig:
        return cls(
            pool=lib.images_rbd_pool,
            conf=Path(lib.images_rbd_ceph_conf) if lib.images_rbd_ceph_conf else None,
            user=lib.rbd_user,
            secret_uuid=lib.rbd_secret_uuid,
        )

    def cluster(self) -> Cluster:
        return Cluster(self.conf, self.user)


class RbdBackend(DiskBackend):
    name = BackendName.RBD
    supports_rescue = False

    def __init__(self, deps: BackendDeps) -> None:
        super().__init__(deps)
        self.config = RbdConfig.from_settings(deps.libvirt)
        self.locks = deps.locks
        self._cluster: Cluster | None = None
        self._hosts: tuple[tuple[str, int], ...] | None = None
        self._guard = threading.Lock()

    def cluster(self) -> Cluster:
        """One connection for the whole operation (connecting costs more than a clone)."""
        with self._guard:
            if self._cluster is None:
                self._cluster = self.config.cluster().__enter__()
            return self._cluster

    def close(self) -> None:
        with self._guard:
            if self._cluster is not None:
                self._cluster.__exit__(None, None, None)
                self._cluster = None

    def locate(self, disk: DiskPlan) -> ProvisionedDisk:
        if disk.role not in _ROLES:
            return super().adopt(disk, disk.path)
        if self._hosts is None:
            self._hosts = monitors(self.config.conf) if self.config.conf else ()
        auth = NetworkAuth(self.config.user, self.config.secret_uuid) if self.config.user else None
        name = f"{self.config.pool}/{disk.owner}_{disk.name}"
        return ProvisionedDisk(
            NetworkSource(PROTOCOL, name, self._hosts, auth, self.config.conf), "raw"
        )

    def needs_base(self, location: str | None) -> bool:
        return self._clone_source(location) is None

    def _clone_source(self, location: str | None) -> tuple[str, str, str] | None:
        """(pool, image, snap) of a cloneable Glance location in this cluster, else None."""
        parsed = parse_rbd_url(location or "")
        if parsed is None or parsed[0] != self.cluster().fsid:
            return None
        return parsed[1], parsed[2], parsed[3]

    def ensure_disk(
        self,
        disk: DiskPlan,
        target: Path,
        base: CachedImage | None,
        location: str | None = None,
    ) -> ProvisionedDisk:
        if disk.role is DiskRole.ROOT and base is None:
            self._clone_from_glance(disk, location)
            return self.locate(disk)
        return super().ensure_disk(disk, target, base, location)

    def exists(self, disk: DiskPlan, target: Path) -> bool:
        return False  # names are per instance uuid: a new build never finds one

    def _clone_from_glance(self, disk: DiskPlan, location: str | None) -> None:
        source = self._clone_source(location)
        if source is None:
            raise NotSupported("the Glance image is not in this Ceph cluster")
        cluster = self.cluster()
        gpool, gimage, snap = source
        with cluster.pool(self.config.pool) as ioctx, cluster.pool(gpool) as gctx:
            verify_base_size(Pool(cluster, gctx, gpool).info(gimage).size, disk.size)
            pool = Pool(cluster, ioctx, self.config.pool)
            pool.clone_from(gctx, gimage, snap, _image(disk))
            if disk.size:
                pool.resize(_image(disk), disk.size)

    def create_from_base(self, disk: DiskPlan, target: Path, base: CachedImage) -> None:
        self._clone_local(disk, base.name, base.path)

    def create_blank(self, disk: DiskPlan, target: Path) -> None:
        if disk.base is None or disk.size is None:
            raise ValueError(f"{disk.name} needs a template name and a size")
        make = lambda tmp: self.format_blank(disk, tmp)  # noqa: E731
        with self.templates.using(disk.base, disk.size, make) as template:
            self._clone_local(disk, disk.base, template)

    def adopt(self, disk: DiskPlan, local: Path) -> ProvisionedDisk:
        """Import a file made locally (the config drive) as the disk's image; remove the file."""
        cluster = self.cluster()
        with cluster.pool(self.config.pool) as ioctx:
            pool = Pool(cluster, ioctx, self.config.pool)
            pool.remove(_image(disk))
            pool.create(_image(disk), local.stat().st_size)
            pool.write_file(_image(disk), local)
        local.unlink()
        return self.locate(disk)

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

    def describe(self, entry: DiskEntry) -> DiskState:
        if not isinstance(entry.source, NetworkSource):
            return super().describe(entry)
        pool_name, image = entry.source.name.split("/", 1)
        info = None
        cluster = self.cluster()
        with cluster.pool(pool_name) as ioctx:
            pool = Pool(cluster, ioctx, pool_name)
            if pool.exists(image):
                info = pool.info(image)
        parent = info.parent if info else None
        return DiskState(
            f"rbd:{entry.source.name}",
            info.size if info else None,
            None,
            parent,
            details=(("pool", pool_name), ("image", image), ("parent", parent)),
        )

    def resize(self, entry: DiskEntry, size: int) -> None:
        if not isinstance(entry.source, NetworkSource):
            super().resize(entry, size)
            return
        pool_name, image = entry.source.name.split("/", 1)
        cluster = self.cluster()
        with cluster.pool(pool_name) as ioctx:
            Pool(cluster, ioctx, pool_name).resize(image, size)

    def check_present(self, entry: DiskEntry, base_dir: Path) -> None:
        if not isinstance(entry.source, NetworkSource):
            super().check_present(entry, base_dir)

    def remove(self, entries: Sequence[DiskEntry]) -> None:
        """Remove an instance's RBD images; parents (bases, Glance's) are never touched."""
        self._remove([e.source.name for e in entries if isinstance(e.source, NetworkSource)])

    def discard(self, disks: Sequence[DiskPlan]) -> None:
        self._remove([f"{self.config.pool}/{_image(d)}" for d in disks if d.role in _ROLES])

    def _remove(self, specs: list[str]) -> None:
        if not specs:
            return
        cluster = self.cluster()
        for spec in specs:
            pool_name, name = spec.split("/", 1)
            with cluster.pool(pool_name) as ioctx:
                Pool(cluster, ioctx, pool_name).remove(name)


def _image(disk: DiskPlan) -> str:
    return f"{disk.owner}_{disk.name}"


def _remove_with_snaps(pool: Pool, image: str) -> None:
    pool.remove_with_snaps(image)
