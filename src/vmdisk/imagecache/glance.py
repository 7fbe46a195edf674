"""OpenStack Glance (image API v2) as an image source: `glance://IMAGE_ID`.

The image's disk_format is the declared format, its os_hash_value/os_hash_algo (else the md5
checksum) is verified while streaming, and its id is the image id, so cache names are Nova's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmdisk.errors import ImageFetchError, ImageNotFound, InvalidRequest, UnsafeImage
from vmdisk.imagecache.records import Checksum
from vmdisk.imagecache.sources import HttpSource, Opened, SourceFacts, redact_url
from vmdisk.lazy import LazyModule

if TYPE_CHECKING:
    import requests
else:
    requests = LazyModule("requests")

SCHEME = "glance://"
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
    def __init__(
        self,
        api_url: str,
        token: str | None = None,
        project: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not api_url:
            raise InvalidRequest(
                "glance:// sources need [glance] api_url in the settings",
                reason="glance-not-configured",
            )
        self.api_url = api_url.rstrip("/")
        self.headers = {"Accept": "application/json"}
        if token:
            self.headers["X-Auth-Token"] = token
        if project:
            self.headers["X-Project-Id"] = project
            self.headers["X-Tenant-Id"] = project
        self.timeout = timeout

    def image(self, image_id: str) -> GlanceImage:
        url = f"{self.api_url}/v2/images/{image_id}"
        try:
            response = requests.get(url, headers=self.headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ImageFetchError(
                f"cannot reach Glance at {redact_url(self.api_url)}: {exc}",
                reason="connection-failed",
            ) from exc
        if response.status_code == 404:
            raise ImageNotFound(f"Glance has no image {image_id}", reason="not-found")
        if response.status_code in (401, 403):
            raise ImageFetchError(
                f"Glance refused access to image {image_id} (HTTP {response.status_code})",
                reason="forbidden",
                hint="check [glance] token and project",
            )
        if response.status_code != 200:
            raise ImageFetchError(
                f"Glance answered HTTP {response.status_code} for {image_id}",
                reason=f"http-{response.status_code}",
            )
        return _parse(response.json())

    def source(self, image_id: str) -> HttpSource:
        return HttpSource(
            f"{self.api_url}/v2/images/{image_id}/file",
            headers={k: v for k, v in self.headers.items() if k != "Accept"},
        )


def _parse(data: dict[str, Any]) -> GlanceImage:
    checksum = None
    algo, value = data.get("os_hash_algo"), data.get("os_hash_value")
    if algo and value:
        checksum = Checksum.parse(f"{algo}:{value}")
    elif data.get("checksum"):
        checksum = Checksum.parse(f"md5:{data['checksum']}")
    locations = [loc.get("url", "") for loc in data.get("locations") or []]
    direct = data.get("direct_url") or next((u for u in locations if u.startswith("rbd://")), None)
    return GlanceImage(
        id=str(data["id"]),
        disk_format=str(data.get("disk_format") or ""),
        status=str(data.get("status", "")),
        size=data.get("size"),
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
