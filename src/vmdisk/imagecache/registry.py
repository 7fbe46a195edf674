"""Which source reads which scheme, and the one place a request becomes a ResolvedImage.

Built once per Host from the settings slices it needs (download timeouts, the Glance
endpoint); a new scheme (simplestreams, OCI) registers here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vmdisk.errors import UnsafeImage
from vmdisk.imagecache.glance import SCHEME as GLANCE_SCHEME
from vmdisk.imagecache.glance import Glance, GlanceSource, image_id_of
from vmdisk.imagecache.http import HttpClient, HttpOptions
from vmdisk.imagecache.netguard import AddressClass, Resolver, classify, system_resolver
from vmdisk.imagecache.records import cache_name
from vmdisk.imagecache.request import ImageRequest, ResolvedImage
from vmdisk.imagecache.sources import ImageSource, open_source
from vmdisk.settings import GlanceSettings, ImageCacheSettings, Settings


class SourceRegistry:
    """Schemes to sources: glance:// through the configured Glance, the rest as given.

    `resolve` and `classify_address` are the network seams: the system's resolver and the
    real address classes unless a test names a fake (a public address cannot exist here).
    """

    def __init__(
        self,
        glance: GlanceSettings | None = None,
        *,
        options: HttpOptions | None = None,
        resolve: Resolver = system_resolver,
        classify_address: Callable[[str], AddressClass] = classify,
    ) -> None:
        self.glance_settings = glance or GlanceSettings()
        self.options = options or HttpOptions()
        self.resolver = resolve
        self.classify_address = classify_address

    @classmethod
    def from_settings(cls, settings: Settings) -> SourceRegistry:
        return cls(settings.glance, options=http_options(settings.image_cache))

    def glance(self) -> Glance:
        g = self.glance_settings
        options = dataclasses.replace(self.options, ca_file=g.cafile or self.options.ca_file)
        client = HttpClient(options, resolve=self.resolver, classify_address=self.classify_address)
        return Glance(g.api_url, g.token, g.project, client=client)

    def open(self, text: str) -> ImageSource:
        """Turn what the user typed into a source; refuse schemes we never read."""
        if text.startswith(GLANCE_SCHEME):
            return GlanceSource(self.glance(), image_id_of(text))
        return open_source(
            text,
            options=self.options,
            resolve=self.resolver,
            classify_address=self.classify_address,
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


def http_options(c: ImageCacheSettings) -> HttpOptions:
    """The [image_cache] download_* settings, as the HTTP client takes them."""
    return HttpOptions(
        connect_timeout=c.download_connect_timeout,
        stall_timeout=c.download_stall_timeout,
        header_timeout=c.download_header_timeout,
        trust_env=c.download_trust_env,
    )
