"""The one exception tree of vmdisk, and the exit code each branch maps to.

VmdiskError                      exit 1; message, optional hint and machine-readable reason
  SettingsError                  exit 3; bad file, unknown key, value out of range
  InvalidRequest                 exit 2; a bad name, size, URL or option from the caller
    InstanceExists               a name or uuid already used on this host
    NotSupported                 the backend cannot do this (rescue on RBD, ...)
    ShrinkRefused                a disk cannot be made smaller
    FlavorDiskSmallerThanImage   the image does not fit the root disk (exit 1, like Nova)
  InstanceNotFound
  ImageError
    ImageNotFound                the source does not exist or the server said 404
    ImageFetchError              network or read failure while fetching
    ImageRefused                 exit 4; the image itself is refused
      UnsafeImage                backing file, data file, flat extent, mismatch, corrupt...
      ChecksumMismatch
      ImageTooLarge              virtual size over --max-size or absurd
    RegistryError                an OCI registry refused or failed a request (auth, TLS, push)
  BackendError
    InsufficientSpace            the filesystem (or Ceph pool) cannot hold what we write
    DiskMissing                  an instance disk or its base is gone
    CephError                    a librados/librbd call failed; names pool, image, errno
      CephUnavailable            cannot connect, or the cluster stopped answering
      PoolNotFound               the pool does not exist
      RbdImageNotFound           the RBD image does not exist (also a DiskMissing)
  ToolError                      tool, argv (redacted), exit code, stderr tail
    ToolNotFound                 executable missing; the hint names the Debian package
    ToolLimitExceeded            killed by its resource limits or its timeout
  LockTimeout
  Interrupted                    exit 130; SIGINT or SIGTERM while working
  InternalError                  a broken invariant: a bug in vmdisk or in an API caller

Only tools/ceph.py sees the exceptions of the rados/rbd bindings; it raises this tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar


class VmdiskError(Exception):
    """Base of every error the library raises on purpose."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, hint: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.reason = reason

    def to_dict(self) -> dict[str, object]:
        return {"type": type(self).__name__, "message": self.message, "reason": self.reason}


class SettingsError(VmdiskError):
    exit_code = 3


class InvalidRequest(VmdiskError):
    exit_code = 2


class InstanceExists(InvalidRequest):
    pass


class FlavorDiskSmallerThanImage(InvalidRequest):
    # Nova reports this as an operational failure of the build, not a usage error.
    exit_code = 1


class NotSupported(InvalidRequest):
    """A backend cannot do what was asked; reason "not-supported"."""


class ShrinkRefused(InvalidRequest):
    """Disks only grow, as in Nova; reason "shrink-refused"."""


class InstanceNotFound(VmdiskError):
    pass


class ImageError(VmdiskError):
    pass


class ImageNotFound(ImageError):
    pass


class ImageFetchError(ImageError):
    pass


class ImageRefused(ImageError):
    exit_code = 4


class UnsafeImage(ImageRefused):
    """Reasons: backing-file, data-file, flat-extent, format-mismatch, encrypted, corrupt,
    too-large, not-an-image."""


class ChecksumMismatch(ImageRefused):
    pass


class ImageTooLarge(ImageRefused):
    pass


class BackendError(VmdiskError):
    pass


class InsufficientSpace(BackendError):
    pass


class DiskMissing(BackendError):
    pass


class CephError(BackendError):
    """Translated at tools/ceph.py from the bindings' errors, which carry librados' errno."""

    def __init__(
        self,
        message: str,
        *,
        pool: str | None = None,
        image: str | None = None,
        errno: int | None = None,
        hint: str | None = None,
        reason: str | None = None,
    ):
        super().__init__(message, hint=hint, reason=reason)
        self.pool = pool
        self.image = image
        self.errno = errno


class CephUnavailable(CephError):
    pass


class PoolNotFound(CephError):
    pass


class RbdImageNotFound(CephError, DiskMissing):
    pass


class ToolError(VmdiskError):
    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        returncode: int | None = None,
        stderr: str = "",
        hint: str | None = None,
        reason: str | None = None,
    ):
        super().__init__(message, hint=hint, reason=reason)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class ToolNotFound(ToolError):
    pass


class ToolLimitExceeded(ToolError):
    pass


class LockTimeout(VmdiskError):
    pass


class Interrupted(VmdiskError):
    exit_code = 130


class InternalError(VmdiskError):
    """Not the user's input but a broken invariant; exit 1, never a usage error (exit 2)."""

    def __init__(self, message: str, *, hint: str | None = None, reason: str | None = "internal"):
        super().__init__(message, hint=hint, reason=reason)


# -- issue 16, intake side (appended) ---------------------------------------------------------


class CacheEntryConflict(ImageRefused):
    """A cache hit that contradicts the request: another source, checksum, format or size.

    Exit 4 like every refusal; reasons "source-mismatch", "checksum-mismatch",
    "checksum-unverifiable", "format-mismatch", "too-large". The hint says how to replace it.
    """


# --- the image plane (images helper) ---


class ImageInUse(ImageError):
    """An image (or an instance disk) is used by instances or open by a running VM; the
    operation would change what they read. Reason "in-use"."""


class RegistryError(ImageError):
    """An OCI registry refused or failed a request: auth, TLS, an unexpected answer."""


# Running guests (start, stop, status, ssh; issue 18):
#   GuestError (exit 1) > InstanceRunning, InstanceNotRunning, GuestTimeout, HostKeyUnknown
#   BackendError > QmpError


class GuestError(VmdiskError):
    """What a guest is doing (or not doing) stopped an operation."""


class InstanceRunning(GuestError):
    """delete, resize, rescue or start of a running instance; reason "running"."""


class InstanceNotRunning(GuestError):
    """ssh, ip, console need a running guest; reason "not-running"."""


class GuestTimeout(GuestError):
    """boot, wait or stop did not see what it waited for in time; reason "timeout" or
    "wait-for-not-seen"."""


class HostKeyUnknown(GuestError):
    """The guest printed no host keys on its console to check ssh against (cloud-init prints
    them at its final stage); reason "host-key-unknown", hint --insecure."""


class QmpError(BackendError):
    """qemu's QMP socket is gone or refused a command; reason "qmp", "qmp-unavailable"."""
