"""vmdisk: build a virtual machine's disks on a KVM host the way Nova's libvirt driver does.

The public API is re-exported here: the whole error tree, and every type a caller passes to or
receives from Host (tests/unit/test_public_api.py keeps the list complete); everything else is
internal and may change.
"""

from vmdisk._version import __version__
from vmdisk.backends import BackendDeps, BackendInfo, DiskBackend, DiskState
from vmdisk.boot import BootResult
from vmdisk.errors import (
    BackendError,
    CacheEntryConflict,
    CephError,
    CephUnavailable,
    ChecksumMismatch,
    DiskMissing,
    FlavorDiskSmallerThanImage,
    ImageError,
    ImageFetchError,
    ImageInUse,
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
    NotSupported,
    PoolNotFound,
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
from vmdisk.host import Host
from vmdisk.imagecache.cleaner import Action, CleanupPlan, CleanupPolicy, CleanupResult, Decision
from vmdisk.imagecache.entries import EntryKind
from vmdisk.imagecache.glance import Glance
from vmdisk.imagecache.http import HttpOptions
from vmdisk.imagecache.listing import ImageRow
from vmdisk.imagecache.manage import RefreshResult
from vmdisk.imagecache.probe import Probe
from vmdisk.imagecache.records import BaseRecord, Checksum
from vmdisk.imagecache.registry import SourceRegistry
from vmdisk.imagecache.request import ImageRequest, ResolvedImage
from vmdisk.imagecache.sources import ImageSource, SourceFacts
from vmdisk.imagecache.store import CachedImage
from vmdisk.imagecache.verify import Verdict
from vmdisk.instances import Instance
from vmdisk.inventory import CacheEntry, CacheListing
from vmdisk.libvirt.domain import DiskDevice, Domain, HostFacts
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
from vmdisk.tools.runner import Runner

__all__ = [
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
    "OciSettings",
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
    "RegistryError",
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
    # issue 16
    "CacheEntryConflict",
    "HttpOptions",
    # the image plane (images helper)
    "ImageInUse",
    "ImageRow",
    "Probe",
    "RefreshResult",
]

# Running guests (issue 18): start, stop, status, ssh.
from vmdisk.errors import (
    GuestError,
    GuestTimeout,
    HostKeyUnknown,
    InstanceNotRunning,
    InstanceRunning,
    QmpError,
)
from vmdisk.libvirt.domain import NicDevice
from vmdisk.runtime.guests import (
    Guests,
    SshTarget,
    StartResult,
    StopResult,
    WaitResult,
)
from vmdisk.runtime.state import RuntimeInfo, VmState, VmStatus
from vmdisk.tools.runner import CommandResult

__all__ += [
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
]
