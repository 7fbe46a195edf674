"""The backend registry: each backend's name, what the plan needs to know of it, a factory.

Factories import their module on first use, so a command that makes no disk never imports
a backend (and RBD's bindings stay unloaded unless an RBD disk is touched).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vmdisk.backends.base import BackendDeps, DiskBackend, DiskState
from vmdisk.errors import InvalidRequest
from vmdisk.model import BackendName


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What planning needs to know of a backend, without making one."""

    name: BackendName
    disk_format: str  # the driver format of root, ephemeral and swap disks
    shares_templates: bool  # ephemeral/swap are made once in _base and shared (overlay/clone)
    file_root: bool  # the root disk is a file in the instance directory (injection works)
    factory: Callable[[BackendDeps], DiskBackend]


def _qcow2(deps: BackendDeps) -> DiskBackend:
    from vmdisk.backends.qcow2 import Qcow2Backend

    return Qcow2Backend(deps)


def _flat(deps: BackendDeps) -> DiskBackend:
    from vmdisk.backends.flat import FlatBackend

    return FlatBackend(deps)


def _rbd(deps: BackendDeps) -> DiskBackend:
    from vmdisk.backends.rbd import RbdBackend

    return RbdBackend(deps)


def _lvm(deps: BackendDeps) -> DiskBackend:
    from vmdisk.backends.lvm import LvmBackend

    return LvmBackend(deps)


BACKENDS: dict[BackendName, BackendInfo] = {
    BackendName.QCOW2: BackendInfo(BackendName.QCOW2, "qcow2", True, True, _qcow2),
    BackendName.FLAT: BackendInfo(BackendName.FLAT, "raw", False, True, _flat),
    BackendName.RBD: BackendInfo(BackendName.RBD, "raw", True, False, _rbd),
    BackendName.LVM: BackendInfo(BackendName.LVM, "raw", False, False, _lvm),
}


def backend_info(
    name: BackendName, registry: Mapping[BackendName, BackendInfo] | None = None
) -> BackendInfo:
    try:
        return (BACKENDS if registry is None else registry)[name]
    except KeyError:
        raise InvalidRequest(
            f"backend {name} is not available on this host",
            reason="bad-backend",
            hint="use --backend " + ", --backend ".join(sorted(BACKENDS)),
        ) from None


def open_backend(
    name: BackendName,
    deps: BackendDeps,
    registry: Mapping[BackendName, BackendInfo] | None = None,
) -> DiskBackend:
    """A backend for one operation; close it (or use `with`) to release its connections."""
    return backend_info(name, registry).factory(deps)


__all__ = [
    "BACKENDS",
    "BackendDeps",
    "BackendInfo",
    "DiskBackend",
    "DiskState",
    "backend_info",
    "open_backend",
]
