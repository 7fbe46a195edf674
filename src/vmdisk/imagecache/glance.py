"""OpenStack Glance (image API v2) as an image source: `glance://IMAGE_ID`.

The image's disk_format is the declared format, its os_hash_value/os_hash_algo (else the md5
checksum) is verified while streaming, and its id is the image id, so cache names are Nova's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmdisk.errors import (
    ImageFetchError,
    ImageNotFound,
    InvalidRequest,
    SettingsError,
    UnsafeImage,
)
from vmdisk.imagecache.records import Checksum
from vmdisk.imagecache.sources import HttpSource, Opened, SourceFacts, redact_url
from vmdisk.imagecache.urls import HttpOptions, TransientFetchError, check_url
from vmdisk.lazy import LazyModule

if TYPE_CHECKING:
    import requests
    import urllib3

    from vmdisk.imagecache import http
    from vmdisk.imagecache.http import HttpClient
else:  # imported by the first Glance request, not by every command (vmdisk/lazy.py)
    requests, urllib3 = LazyModule("requests"), LazyModule("urllib3")
    http = LazyModule("vmdisk.imagecache.http")

SCHEME = "glance://"
#: An image's metadata is a few KiB; a bigger answer is not Glance's.
MAX_METADATA = 1024 * 1024
FORMATS = {
    "raw": "raw",
    "qcow2": "qcow2",
    "vmdk": "vmdk",
    "vhd": "vpc",
    "vhdx": "vhdx",
    "iso": "iso",
}


@dataclass(frozen=True, slots=True)
class GlanceImage:
    id: str
    disk_format: str
    status: str
    size: int | None
    checksum: Checksum | None
    direct_url: str | None


def image_id_of(source: str) -> str:
    image_id = source[len(SCHEME) :].strip("/")
    if not image_id or "/" in image_id:
        raise InvalidRequest(
            f"not a Glance image reference: {source!r}",
            hint="use glance://IMAGE_ID",
            reason="bad-source",
        )
    return image_id


class Glance:
    """The image API of one endpoint, through one guarded client for metadata and data.

    The token and project go only to the endpoint's origin (scheme, host, port): a redirect
    elsewhere, for the metadata or the file, gets neither.
    """

    def __init__(
        self,
        api_url: str,
        token: str | None = None,
        project: str | None = None,
        timeout: float | None = None,
        *,
        client: HttpClient | None = None,
    ) -> None:
        if not api_url:
            raise InvalidRequest(
                "glance:// sources need [glance] api_url in the settings",
                reason="glance-not-configured",
            )
        try:
            check_url(api_url)
        except InvalidRequest as exc:
            raise SettingsError(
                f"settings: [glance] api_url: {exc.message}", hint=exc.hint
            ) from None
        self.api_url = api_url.rstrip("/")
        self.credentials: dict[str, str] = {}
        if token:
            self.credentials["X-Auth-Token"] = token
        if project:
            self.credentials["X-Project-Id"] = project
            self.credentials["X-Tenant-Id"] = project
        if client is None:  # timeout: the stall timeout of a client of our own
            client = http.HttpClient(
                HttpOptions() if timeout is None else HttpOptions(stall_timeout=timeout)
            )
        self.client = client

    def image(self, image_id: str) -> GlanceImage:
        url = f"{self.api_url}/v2/images/{image_id}"
        try:
            response = self.client.get(
                url,
                {"Accept": "application/json", "Accept-Encoding": "identity"},
                credentials=self.credentials,
            )
        except TransientFetchError as exc:
            raise ImageFetchError(
                f"Glance at {redact_url(self.api_url)} did not answer: {exc}",
                reason="connection-failed",
            ) from exc
        with response:
            _check_status(response, image_id)
            data = _read_json(response, self.api_url)
        try:
            return _parse(data)
        except (KeyError, TypeError, ValueError, InvalidRequest) as exc:
            raise ImageFetchError(
                f"Glance at {redact_url(self.api_url)} sent metadata without a usable "
                f"{exc.args[0] if isinstance(exc, KeyError) else 'value'} for {image_id}",
                reason="bad-response",
            ) from exc

    def source(self, image_id: str) -> HttpSource:
        return HttpSource(
            f"{self.api_url}/v2/images/{image_id}/file",
            client=self.client,
            credentials=self.credentials,
        )


def _check_status(response: requests.Response, image_id: str) -> None:
    status = response.status_code
    if status == 404:
        raise ImageNotFound(f"Glance has no image {image_id}", reason="not-found")
    if status in (401, 403):
        raise ImageFetchError(
            f"Glance refused access to image {image_id} (HTTP {status})",
            reason="forbidden",
            hint="check [glance] token and project",
        )
    if status != 200:
        raise ImageFetchError(
            f"Glance answered HTTP {status} for {image_id}", reason=f"http-{status}"
        )


def _read_json(response: requests.Response, api_url: str) -> dict[str, Any]:
    """The metadata document, read to at most MAX_METADATA bytes."""
    body = b""
    try:
        for chunk in response.raw.stream(64 * 1024, decode_content=False):
            body += chunk
            if len(body) > MAX_METADATA:
                raise ImageFetchError(
                    f"Glance at {redact_url(api_url)} sent over {MAX_METADATA} bytes of metadata",
                    reason="bad-response",
                )
        data = json.loads(body)
    except (ValueError, OSError, requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise ImageFetchError(
            f"Glance at {redact_url(api_url)} sent metadata that is not JSON",
            reason="bad-response",
        ) from exc
    if not isinstance(data, dict):
        raise ImageFetchError(
            f"Glance at {redact_url(api_url)} sent metadata that is not an object",
            reason="bad-response",
        )
    return data


def _parse(data: dict[str, Any]) -> GlanceImage:
    checksum = None
    algo, value = data.get("os_hash_algo"), data.get("os_hash_value")
    if algo and value:
        checksum = Checksum.parse(f"{algo}:{value}")
    elif data.get("checksum"):
        checksum = Checksum.parse(f"md5:{data['checksum']}")
    locations = [loc.get("url", "") for loc in data.get("locations") or []]
    direct = data.get("direct_url") or next((u for u in locations if u.startswith("rbd://")), None)
    size = data.get("size")
    if size is not None and (type(size) is not int or size < 0):
        raise ValueError("size")
    return GlanceImage(
        id=str(data["id"]),
        disk_format=str(data.get("disk_format") or ""),
        status=str(data.get("status", "")),
        size=size,
        checksum=checksum,
        direct_url=direct,
    )


class GlanceSource:
    """The bytes of a Glance image, streamed from /v2/images/ID/file."""

    def __init__(self, glance: Glance, image_id: str) -> None:
        self.image_id = image_id
        self._glance = glance
        self._http = glance.source(image_id)

    @property
    def display(self) -> str:
        return f"{SCHEME}{self.image_id}"

    def normalised(self) -> str:
        return self.image_id

    def resolve(self) -> SourceFacts:
        """The id, declared format, hash and (for raw images) rbd:// location Glance keeps.

        Refuses an image that is not active or whose disk_format vmdisk never reads.
        """
        image = self._glance.image(self.image_id)
        if image.status != "active":
            raise ImageNotFound(
                f"Glance image {image.id} is {image.status}, not active", reason="not-active"
            )
        declared = FORMATS.get(image.disk_format)
        if declared is None:
            raise UnsafeImage(
                f"Glance disk_format {image.disk_format!r} is not allowed", reason="format-mismatch"
            )
        location = image.direct_url if declared == "raw" else None
        return SourceFacts(image.id, declared, image.checksum, image.size, location)

    def open(self, offset: int = 0) -> Opened:
        return self._http.open(offset)
