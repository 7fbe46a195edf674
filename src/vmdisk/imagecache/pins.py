"""What a request pins, checked against a cache entry's record before the entry is used.

A hit skips the download, so it must not skip the checks: the checksum, declared format, kind,
size limits and the source the user asked for all hold against what the record says was
fetched, or the hit is refused with both values and the way to replace the entry.
"""

from __future__ import annotations

from vmdisk.errors import CacheEntryConflict, FlavorDiskSmallerThanImage, InvalidRequest
from vmdisk.imagecache.records import BaseRecord
from vmdisk.imagecache.request import ResolvedImage
from vmdisk.units import format_size


def replace_hint(request: ResolvedImage) -> str:
    return (
        f"replace the cached entry with: vmdisk image fetch {request.source.display} "
        f"--id {request.image_id} --replace (refused while an instance uses it)"
    )


def check_pins(
    record: BaseRecord,
    request: ResolvedImage,
    *,
    max_virtual_size: int | None = None,
    root_size: int | None = None,
) -> None:
    """Refuse a hit whose record contradicts anything the request pins; silent when it holds."""
    _same_kind(record, request)
    _same_source(record, request)
    _same_checksum(record, request)
    _same_format(record, request)
    _within_limits(record, request, max_virtual_size, root_size)


def source_differs(record: BaseRecord, request: ResolvedImage) -> bool:
    if record.source_id is not None:
        return record.source_id != request.source.normalised()
    return record.source != request.source.display  # a record written before source_id


def _same_kind(record: BaseRecord, request: ResolvedImage) -> None:
    """One image id is one thing: a disk image is never handed out as a kernel, or back."""
    if record.kind != request.kind:
        raise InvalidRequest(
            f"image id {record.image_id} is cached as kind {record.kind!r}, not {request.kind!r}",
            reason="kind-mismatch",
            hint=f"give the {request.kind} its own id (--{request.kind}-id)",
        )


def _same_source(record: BaseRecord, request: ResolvedImage) -> None:
    if source_differs(record, request):
        raise CacheEntryConflict(
            f"image id {record.image_id} is cached from {record.source}, "
            f"not from {request.source.display}",
            reason="source-mismatch",
            hint=replace_hint(request),
        )


def _same_checksum(record: BaseRecord, request: ResolvedImage) -> None:
    pinned = request.checksum
    if pinned is None:
        return
    recorded = record.download_digest(pinned.algorithm)
    if recorded is None:
        raise CacheEntryConflict(
            f"image id {record.image_id} was cached without a {pinned.algorithm} digest, so "
            f"{pinned} cannot be verified (its sha256 is {record.sha256_download})",
            reason="checksum-unverifiable",
            hint=f"pin it with sha256:..., or {replace_hint(request)}",
        )
    if recorded != pinned.hexdigest:
        raise CacheEntryConflict(
            f"image id {record.image_id} is cached with {pinned.algorithm} {recorded}, "
            f"the request pins {pinned.hexdigest}",
            reason="checksum-mismatch",
            hint=replace_hint(request),
        )


def _same_format(record: BaseRecord, request: ResolvedImage) -> None:
    declared, detected = request.declared_format, record.detected_format
    if declared is None or record.kind != "image":
        return
    if declared == detected or (declared == "raw" and detected == "gpt"):
        return
    raise CacheEntryConflict(
        f"image id {record.image_id} is cached as {detected}, the request declares {declared}",
        reason="format-mismatch",
        hint=replace_hint(request),
    )


def _within_limits(
    record: BaseRecord,
    request: ResolvedImage,
    max_virtual_size: int | None,
    root_size: int | None,
) -> None:
    size = record.virtual_size
    for limit in (request.max_size, max_virtual_size):
        if limit is not None and size > limit:
            raise CacheEntryConflict(
                f"image id {record.image_id} is cached with virtual size {format_size(size)}, "
                f"over the limit of {format_size(limit)}",
                reason="too-large",
                hint="raise --max-size (or [image_cache] max_virtual_size) if this is expected",
            )
    if root_size is not None and record.kind == "image" and size > root_size:
        raise flavor_too_small(size, root_size)


def flavor_too_small(
    image_size: int, root_size: int, *, partial: bool = False
) -> FlavorDiskSmallerThanImage:
    """The same error backends.base.verify_base_size raises, available before any byte lands.

    partial: a raw download stopped at `image_size` bytes, which is only a lower bound.
    """
    what = "the raw download already passes" if partial else "the image's virtual size"
    verb = ", more than" if partial else " is larger than"
    return FlavorDiskSmallerThanImage(
        f"{what} {format_size(image_size)}{verb} the flavor's root disk {format_size(root_size)}",
        reason="flavor-too-small",
        hint="pick a flavor with a larger root disk, or --root-gb 0 for the image's size",
    )
