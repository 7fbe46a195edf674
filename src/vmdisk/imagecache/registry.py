"""Which source reads which scheme, and the one place a request becomes a ResolvedImage.

Built once per Host from the settings slices it needs (download timeouts, the Glance
endpoint); a new scheme (simplestreams, OCI) registers here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vmdisk.errors import UnsafeImage
from vmdisk.imagecache.compressed import CompressedSource, compression_of, output_cap
from vmdisk.imagecache.glance import SCHEME as GLANCE_SCHEME
from vmdisk.imagecache.glance import Glance, GlanceSource, image_id_of
from vmdisk.imagecache.mirrors import MirroredSource, mirror_for
from vmdisk.imagecache.names import ImageNames
from vmdisk.imagecache.netguard import AddressClass, Resolver, classify, system_resolver
from vmdisk.imagecache.oci import SCHEME as OCI_SCHEME
from vmdisk.imagecache.records import cache_name
from vmdisk.imagecache.request import ImageRequest, ResolvedImage
from vmdisk.imagecache.simplestreams import SCHEME as SS_SCHEME
from vmdisk.imagecache.simplestreams import SimpleStreamsSource, Verifier
from vmdisk.imagecache.snapshot import SNAPSHOT_SCHEME, SnapshotLabel
from vmdisk.imagecache.sources import ImageSource, open_source
from vmdisk.imagecache.urls import HttpOptions
from vmdisk.settings import GlanceSettings, ImageCacheSettings, OciSettings, Settings
from vmdisk.tools.runner import Runner, SubprocessRunner


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
        oci: OciSettings | None = None,
    ) -> None:
        self.glance_settings = glance or GlanceSettings()
        self.oci_settings = oci or OciSettings()
        self.options = options or HttpOptions()
        self.resolver = resolve
        self.classify_address = classify_address
        self.names: ImageNames | None = None  # aliases and cached ids, set by Host
        self.max_virtual_size: int | None = None  # caps decompressed images, set by Host
        self.ss_keyring = ""  # [image_cache] simplestreams_keyring, set by Host
        self.ss_runner: Runner | None = None  # runs gpgv, set by Host
        self.mirrors: tuple[tuple[str, str], ...] = ()  # [image_cache] mirrors, set by Host

    @classmethod
    def from_settings(cls, settings: Settings) -> SourceRegistry:
        return cls(settings.glance, options=http_options(settings.image_cache), oci=settings.oci)

    def glance(self) -> Glance:
        g = self.glance_settings
        options = dataclasses.replace(self.options, ca_file=g.cafile or self.options.ca_file)
        from vmdisk.imagecache.http import HttpClient  # requests: only Glance users pay for it

        client = HttpClient(options, resolve=self.resolver, classify_address=self.classify_address)
        return Glance(g.api_url, g.token, g.project, client=client)

    def open(self, text: str) -> ImageSource:
        """Turn what the user typed into a source; refuse schemes we never read."""
        if text.startswith(GLANCE_SCHEME):
            return GlanceSource(self.glance(), image_id_of(text))
        if text.startswith(OCI_SCHEME):
            from vmdisk.imagecache.oci_source import open_oci  # only oci:// users pay for it

            return open_oci(
                text,
                self.oci_settings,
                options=self.options,
                resolve=self.resolver,
                classify_address=self.classify_address,
            )
        return open_source(
            text,
            options=self.options,
            resolve=self.resolver,
            classify_address=self.classify_address,
        )

    def mirrored(self, url: str, source: ImageSource) -> ImageSource:
        """The source read from its `[image_cache] mirrors` entry first, if one matches."""
        mirror = mirror_for(url, self.mirrors) if url.startswith(("http://", "https://")) else None
        return MirroredSource(source, mirror, self.open) if mirror else source

    def open_request(self, request: ImageRequest) -> ImageSource:
        """open(), then a `.xz`/`.gz`/`.zst` source decompressed while it streams, capped at
        the image size limits (a decompression bomb stops there)."""
        if request.source.startswith(SNAPSHOT_SCHEME):
            return SnapshotLabel(request.source)
        if request.source.startswith(SS_SCHEME):
            verifier = Verifier(self.ss_runner or SubprocessRunner(), self.ss_keyring)
            return SimpleStreamsSource(
                request.source,
                verifier,
                options=self.options,
                mirror=self.mirrored,
            )
        source = self.mirrored(request.source, self.open(request.source))
        codec = compression_of(request.source)
        if codec is None:
            return source
        limits = [n for n in (request.max_size, self.max_virtual_size) if n]
        cap = output_cap(min(limits)) if limits else None
        return CompressedSource(source, codec, cap, request.checksum)

    def resolve(self, request: ImageRequest) -> ResolvedImage:
        """Open the source once and merge what it knows under what the user said.

        An alias or a cached image id is expanded first; an explicit image id already cached
        from another source is refused.
        """
        if self.names is not None:
            request = self.names.expand(request)
        source = self.open_request(request)
        image = resolved(request, source)
        if isinstance(source, CompressedSource):  # it checks the checksum of what it reads
            image = dataclasses.replace(image, checksum=None)
        if self.names is not None and request.image_id is not None:
            self.names.check_source(image.image_id, source.display)
        return image


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
