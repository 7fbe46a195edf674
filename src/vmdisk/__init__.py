"""vmdisk: build a virtual machine's disks on a KVM host the way Nova's libvirt driver does.

The public API is re-exported here: the whole error tree, and every type a caller passes to or
receives from Host (tests/unit/test_public_api.py keeps the list complete); everything else is
internal and may change.

Imported lazily: `import vmdisk` (which every `vmdisk` command pays before it parses argv) loads
only the error tree; any other name is imported on first use through `__getattr__` (PEP 562),
so `vmdisk --version` does not pull in qemu, HTTP or ISO code. To export a new name, add it to
`__all__`, to `_LAZY` under its module, and to the `TYPE_CHECKING` imports (for mypy); a name
imported eagerly at the top also works, at the price of import time for every command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vmdisk._version import __version__
from vmdisk.errors import (
    BackendError,
    CacheEntryConflict,
    CephError,
    CephUnavailable,
    ChecksumMismatch,
    DiskMissing,
    FlavorDiskSmallerThanImage,
    GuestError,
    GuestTimeout,
    HostKeyUnknown,
    ImageError,
    ImageFetchError,
    ImageInUse,
    ImageNotFound,
    ImageRefused,
    ImageTooLarge,
    InstanceExists,
    InstanceNotFound,
    InstanceNotRunning,
    InstanceRunning,
    InsufficientSpace,
    InternalError,
    Interrupted,
    InvalidRequest,
    LockTimeout,
    NotSupported,
    PoolNotFound,
    QmpError,
    RbdImageNotFound,
    RegistryError,
    SettingsError,
    ShrinkRefused,
    ToolError,
    ToolLimitExceeded,
    ToolNotFound,
    UnsafeImage,
    VmdiskError,
)

if TYPE_CHECKING:
    from vmdisk.backends import BackendDeps, BackendInfo, DiskBackend, DiskState
    from vmdisk.backends.base import VolumeDecision, VolumePrune
    from vmdisk.boot import BootResult
    from vmdisk.host import Host, PruneOutcome
    from vmdisk.imagecache.cleaner import (
        Action,
        CleanupPlan,
        CleanupPolicy,
        CleanupResult,
        Decision,
    )
    from vmdisk.imagecache.entries import EntryKind
    from vmdisk.imagecache.glance import Glance
    from vmdisk.imagecache.listing import ImageRow
    from vmdisk.imagecache.manage import RefreshResult
    from vmdisk.imagecache.probe import Probe
    from vmdisk.imagecache.records import BaseRecord, Checksum
    from vmdisk.imagecache.registry import SourceRegistry
    from vmdisk.imagecache.request import ImageRequest, ResolvedImage
    from vmdisk.imagecache.sources import ImageSource, SourceFacts
    from vmdisk.imagecache.store import CachedImage
    from vmdisk.imagecache.urls import HttpOptions
    from vmdisk.imagecache.verify import Verdict
    from vmdisk.instances import Instance
    from vmdisk.inventory import CacheEntry, CacheListing
    from vmdisk.libvirt.domain import DiskDevice, Domain, HostFacts, NicDevice
    from vmdisk.model import (
        BackendName,
        BlockSource,
        BootOptions,
        ConfigDriveSpec,
        DiskPlan,
        DiskRole,
        DiskSource,
        FileSource,
        InstancePlan,
        InstanceSpec,
        NetworkAuth,
        NetworkSource,
        OsType,
        ProvisionedDisk,
    )
    from vmdisk.netspec import Interface, InterfaceKind, parse_network
    from vmdisk.plan import plan_disks
    from vmdisk.progress import Progress
    from vmdisk.record import BootFile, DiskEntry, DriveInfo, InstanceRecord, RescueState
    from vmdisk.request import BuiltRequest, CreateOptions, Nic, build_spec
    from vmdisk.runtime.guests import Guests, SshTarget, StartResult, StopResult, WaitResult
    from vmdisk.runtime.state import RuntimeInfo, VmState, VmStatus
    from vmdisk.settings import (
        ConfigDriveFormat,
        Flavor,
        GlanceSettings,
        ImageCacheSettings,
        ImagesType,
        LibvirtSettings,
        OciSettings,
        PreallocateImages,
        Settings,
        VolumeClear,
        load_settings,
    )
    from vmdisk.tools.runner import CommandResult, Runner

# Module -> the public names it defines; resolved on first attribute access.
_LAZY: dict[str, tuple[str, ...]] = {
    "vmdisk.backends": ("BackendDeps", "BackendInfo", "DiskBackend", "DiskState"),
    "vmdisk.backends.base": ("VolumeDecision", "VolumePrune"),
    "vmdisk.boot": ("BootResult",),
    "vmdisk.host": ("Host", "PruneOutcome"),
    "vmdisk.imagecache.cleaner": (
        "Action",
        "CleanupPlan",
        "CleanupPolicy",
        "CleanupResult",
        "Decision",
    ),
    "vmdisk.imagecache.entries": ("EntryKind",),
    "vmdisk.imagecache.glance": ("Glance",),
    "vmdisk.imagecache.urls": ("HttpOptions",),
    "vmdisk.imagecache.listing": ("ImageRow",),
    "vmdisk.imagecache.manage": ("RefreshResult",),
    "vmdisk.imagecache.probe": ("Probe",),
    "vmdisk.imagecache.records": ("BaseRecord", "Checksum"),
    "vmdisk.imagecache.registry": ("SourceRegistry",),
    "vmdisk.imagecache.request": ("ImageRequest", "ResolvedImage"),
    "vmdisk.imagecache.sources": ("ImageSource", "SourceFacts"),
    "vmdisk.imagecache.store": ("CachedImage",),
    "vmdisk.imagecache.verify": ("Verdict",),
    "vmdisk.instances": ("Instance",),
    "vmdisk.inventory": ("CacheEntry", "CacheListing"),
    "vmdisk.libvirt.domain": ("DiskDevice", "Domain", "HostFacts", "NicDevice"),
    "vmdisk.model": (
        "BackendName",
        "BlockSource",
        "BootOptions",
        "ConfigDriveSpec",
        "DiskPlan",
        "DiskRole",
        "DiskSource",
        "FileSource",
        "InstancePlan",
        "InstanceSpec",
        "NetworkAuth",
        "NetworkSource",
        "OsType",
        "ProvisionedDisk",
    ),
    "vmdisk.netspec": ("Interface", "InterfaceKind", "parse_network"),
    "vmdisk.plan": ("plan_disks",),
    "vmdisk.progress": ("Progress",),
    "vmdisk.record": ("BootFile", "DiskEntry", "DriveInfo", "InstanceRecord", "RescueState"),
    "vmdisk.request": ("BuiltRequest", "CreateOptions", "Nic", "build_spec"),
    "vmdisk.runtime.guests": ("Guests", "SshTarget", "StartResult", "StopResult", "WaitResult"),
    "vmdisk.runtime.state": ("RuntimeInfo", "VmState", "VmStatus"),
    "vmdisk.settings": (
        "ConfigDriveFormat",
        "Flavor",
        "GlanceSettings",
        "ImageCacheSettings",
        "ImagesType",
        "LibvirtSettings",
        "OciSettings",
        "PreallocateImages",
        "Settings",
        "VolumeClear",
        "load_settings",
    ),
    "vmdisk.tools.runner": ("CommandResult", "Runner"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'vmdisk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "OciSettings",
    "RegistryError",
    "CacheEntryConflict",
    "HttpOptions",
    "ImageInUse",
    "ImageRow",
    "Probe",
    "RefreshResult",
    "CommandResult",
    "GuestError",
    "GuestTimeout",
    "Guests",
    "HostKeyUnknown",
    "InstanceNotRunning",
    "InstanceRunning",
    "NicDevice",
    "QmpError",
    "RuntimeInfo",
    "SshTarget",
    "StartResult",
    "StopResult",
    "VmState",
    "VmStatus",
    "WaitResult",
    "Action",
    "BackendDeps",
    "BackendError",
    "BackendInfo",
    "BackendName",
    "BaseRecord",
    "BlockSource",
    "BootFile",
    "BootOptions",
    "BootResult",
    "BuiltRequest",
    "CacheEntry",
    "CacheListing",
    "CachedImage",
    "CephError",
    "CephUnavailable",
    "Checksum",
    "ChecksumMismatch",
    "CleanupPlan",
    "CleanupPolicy",
    "CleanupResult",
    "ConfigDriveFormat",
    "ConfigDriveSpec",
    "CreateOptions",
    "Decision",
    "DiskBackend",
    "DiskDevice",
    "DiskEntry",
    "DiskMissing",
    "DiskPlan",
    "DiskRole",
    "DiskSource",
    "DiskState",
    "Domain",
    "DriveInfo",
    "EntryKind",
    "FileSource",
    "Flavor",
    "FlavorDiskSmallerThanImage",
    "Glance",
    "GlanceSettings",
    "Host",
    "HostFacts",
    "ImageCacheSettings",
    "ImageError",
    "ImageFetchError",
    "ImageNotFound",
    "ImageRefused",
    "ImageRequest",
    "ImageSource",
    "ImageTooLarge",
    "ImagesType",
    "Instance",
    "InstanceExists",
    "InstanceNotFound",
    "InstancePlan",
    "InstanceRecord",
    "InstanceSpec",
    "InsufficientSpace",
    "Interface",
    "InterfaceKind",
    "InternalError",
    "Interrupted",
    "InvalidRequest",
    "LibvirtSettings",
    "LockTimeout",
    "NetworkAuth",
    "NetworkSource",
    "Nic",
    "NotSupported",
    "OsType",
    "PoolNotFound",
    "PreallocateImages",
    "Progress",
    "ProvisionedDisk",
    "RbdImageNotFound",
    "RescueState",
    "ResolvedImage",
    "Runner",
    "Settings",
    "SettingsError",
    "ShrinkRefused",
    "SourceFacts",
    "SourceRegistry",
    "ToolError",
    "ToolLimitExceeded",
    "ToolNotFound",
    "UnsafeImage",
    "Verdict",
    "VmdiskError",
    "VolumeClear",
    "build_spec",
    "load_settings",
    "parse_network",
    "plan_disks",
    "__version__",
    # cache prune with base volumes (issue 17)
    "PruneOutcome",
    "VolumeDecision",
    "VolumePrune",
]
