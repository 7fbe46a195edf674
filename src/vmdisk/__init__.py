"""vmdisk: build a virtual machine's disks on a KVM host the way Nova's libvirt driver does.

The public API is re-exported here; everything else is internal and may change.
"""

from vmdisk._version import __version__
from vmdisk.errors import (
    ChecksumMismatch,
    FlavorDiskSmallerThanImage,
    ImageError,
    ImageRefused,
    InsufficientSpace,
    InvalidRequest,
    SettingsError,
    ToolError,
    ToolNotFound,
    UnsafeImage,
    VmdiskError,
)
from vmdisk.host import Host
from vmdisk.imagecache.records import Checksum
from vmdisk.imagecache.store import CachedImage, ImageRequest
from vmdisk.instances import Instance
from vmdisk.model import BackendName, ConfigDriveSpec, InstancePlan, InstanceSpec, OsType
from vmdisk.plan import plan_disks
from vmdisk.record import InstanceRecord
from vmdisk.settings import Flavor, Settings, load_settings

__all__ = [
    "BackendName",
    "CachedImage",
    "Checksum",
    "ChecksumMismatch",
    "ConfigDriveSpec",
    "Flavor",
    "FlavorDiskSmallerThanImage",
    "Host",
    "ImageError",
    "ImageRefused",
    "ImageRequest",
    "InsufficientSpace",
    "Instance",
    "InstancePlan",
    "InstanceRecord",
    "InstanceSpec",
    "InvalidRequest",
    "OsType",
    "Settings",
    "SettingsError",
    "ToolError",
    "ToolNotFound",
    "UnsafeImage",
    "VmdiskError",
    "__version__",
    "load_settings",
    "plan_disks",
]
