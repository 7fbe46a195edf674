"""The backend registry: a plain dict from BackendName to class."""

from __future__ import annotations

from vmdisk.backends.base import DiskBackend
from vmdisk.backends.flat import FlatBackend
from vmdisk.backends.qcow2 import Qcow2Backend
from vmdisk.errors import InvalidRequest
from vmdisk.model import BackendName

BACKENDS: dict[BackendName, type[DiskBackend]] = {
    BackendName.QCOW2: Qcow2Backend,
    BackendName.FLAT: FlatBackend,
}


def backend_class(name: BackendName) -> type[DiskBackend]:
    try:
        return BACKENDS[name]
    except KeyError:
        raise InvalidRequest(
            f"backend {name} is not available on this host",
            reason="bad-backend",
            hint="use --backend qcow2 or --backend flat",
        ) from None


__all__ = ["BACKENDS", "DiskBackend", "backend_class"]
