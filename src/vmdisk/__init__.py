"""vmdisk: build a virtual machine's disks on a KVM host the way Nova's libvirt driver does.

The public API is re-exported here: the whole error tree, and every type a caller passes to or
receives from Host (tests/unit/test_public_api.py keeps the list complete); everything else is
internal and may change.
"""

from vmdisk._version import __version__
from vmdisk.boot import BootResult
from vmdisk.errors import (
    BackendError,
    CephError,
    CephUnavailable,
    ChecksumMismatch,
    DiskMissing,
    FlavorDiskSmallerThanImage,
    ImageError,
    ImageFetchError,
    ImageNotFound,
    ImageRefused,
    ImageTooLarge,
    InstanceExists,
    InstanceNotFound,
    InsufficientSpace,
    InternalError,
    Interrupted,
    InvalidRequest,
    LockTimeout,
    PoolNotFound,
    RbdImageNotFound,
    SettingsError,
    ToolError,
    ToolLimitExceeded,
    ToolNotFound,
    UnsafeImage,
    VmdiskError,
)
from vmdisk.host import Host
from vmdisk.imagecache.cleaner import Action, CleanupPlan, CleanupPolicy, CleanupResult, Decision
from vmdisk.imagecache.entries import EntryKind
from vmdisk.imagecache.glance import Glance
from vmdisk.imagecache.records import BaseRecord, Checksum
from vmdisk.imagecache.sources import ImageSource
from vmdisk.imagecache.store import CachedImage, ImageRequest
from vmdisk.imagecache.verify import Verdict
from vmdisk.instances import Instance, InstanceRecord
from vmdisk.libvirt.domain import CephFacts, DiskDevice, Domain, HostFacts, NetworkSource
from vmdisk.model import (
    BackendName,
    BootOptions,
    ConfigDriveSpec,
    DiskPlan,
    DiskRole,
    InstancePlan,
    InstanceSpec,
    OsType,
)
from vmdisk.netspec import Interface, InterfaceKind, parse_network
from vmdisk.plan import plan_disks
from vmdisk.progress import Progress
from vmdisk.settings import (
    ConfigDriveFormat,
    Flavor,
    GlanceSettings,
    ImageCacheSettings,
    ImagesType,
    LibvirtSettings,
    PreallocateImages,
    Settings,
    load_settings,
)
from vmdisk.tools.runner import Runner

__all__ = [
    "Action",
    "BackendError",
    "BackendName",
    "BaseRecord",
    "BootOptions",
    "BootResult",
    "CachedImage",
    "CephError",
    "CephFacts",
    "CephUnavailable",
    "Checksum",
    "ChecksumMismatch",
    "CleanupPlan",
    "CleanupPolicy",
    "CleanupResult",
    "ConfigDriveFormat",
    "ConfigDriveSpec",
    "Decision",
    "DiskDevice",
    "DiskMissing",
    "DiskPlan",
    "DiskRole",
    "Domain",
    "EntryKind",
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
    "NetworkSource",
    "OsType",
    "PoolNotFound",
    "PreallocateImages",
    "Progress",
    "RbdImageNotFound",
    "Runner",
    "Settings",
    "SettingsError",
    "ToolError",
    "ToolLimitExceeded",
    "ToolNotFound",
    "UnsafeImage",
    "Verdict",
    "VmdiskError",
    "load_settings",
    "parse_network",
    "plan_disks",
    "__version__",
]
