"""Which source reads which scheme, and the one place a request becomes a ResolvedImage.

Built once per Host from the settings slices it needs (download timeouts, the Glance
endpoint); a new scheme (simplestreams, OCI) registers here and nowhere else.
"""

from __future__ import annotations

from vmdisk.errors import UnsafeImage
from vmdisk.imagecache.glance import SCHEME as GLANCE_SCHEME
from vmdisk.imagecache.glance import Glance, GlanceSource, image_id_of
from vmdisk.imagecache.oci import SCHEME as OCI_SCHEME
from vmdisk.imagecache.records import cache_name
from vmdisk.imagecache.request import ImageRequest, ResolvedImage
from vmdisk.imagecache.sources import ImageSource, open_source
from vmdisk.settings import GlanceSettings, ImageCacheSettings, OciSettings, Settings


class SourceRegistry:
    """Schemes to sources: glance:// through the configured Glance, the rest as given."""

    def __init__(
        self,
        glance: GlanceSettings | None = None,
        *,
        connect_timeout: float = 10.0,
        stall_timeout: float = 30.0,
        oci: OciSettings | None = None,
    ) -> None:
        self.glance_settings = glance or GlanceSettings()
        self.oci_settings = oci or OciSettings()
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> SourceRegistry:
        c: ImageCacheSettings = settings.image_cache
        return cls(
            settings.glance,
            connect_timeout=c.download_connect_timeout,
            stall_timeout=c.download_stall_timeout,
            oci=settings.oci,
        )

    def glance(self) -> Glance:
        g = self.glance_settings
        return Glance(g.api_url, g.token, g.project)

    def open(self, text: str) -> ImageSource:
        """Turn what the user typed into a source; refuse schemes we never read."""
        if text.startswith(GLANCE_SCHEME):
            return GlanceSource(self.glance(), image_id_of(text))
        if text.startswith(OCI_SCHEME):
            from vmdisk.imagecache.oci_source import open_oci  # only oci:// users pay for it

            return open_oci(
                text,
                self.oci_settings,
                connect_timeout=self.connect_timeout,
                stall_timeout=self.stall_timeout,
            )
        return open_source(
            text, connect_timeout=self.connect_timeout, stall_timeout=self.stall_timeout
        )

    def resolve(self, request: ImageRequest) -> ResolvedImage:
        """Open the source once and merge what it knows under what the user said."""
        source = self.open(request.source)
        return resolved(request, source)


def resolved(request: ImageRequest, source: ImageSource) -> ResolvedImage:
    """The user's fields win over the source's facts, except a contradicted format: refused."""
    facts = source.resolve()
    declared = request.declared_format
    if declared and facts.declared_format and declared != facts.declared_format:
        raise UnsafeImage(
            f"declared {declared} but Glance says {facts.declared_format}",
            reason="format-mismatch",
        )
    image_id = request.image_id or facts.image_id or source.normalised()
    return ResolvedImage(
        request=request,
        source=source,
        image_id=image_id,
        name=cache_name(image_id),
        declared_format=declared or facts.declared_format,
        checksum=request.checksum or facts.checksum,
        max_size=request.max_size,
        size=facts.size,
        kind=request.kind,
        location=facts.location or request.location,
    )
