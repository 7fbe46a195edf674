"""`vmdisk image push`, and the registry flags of the commands that pull an `oci://` image.

`--insecure-registry HOST:PORT` (plain http, loopback only) and `--platform OS/ARCH` are added
to `image fetch`, `create` and `rescue` here rather than in their modules, so the OCI source
stays one optional piece: the flags only extend `[oci] insecure_registries` and replace
`[oci] platform` for this invocation, before the Host is built.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from vmdisk.cli.context import AppContext, app
from vmdisk.cli.images import image_group
from vmdisk.errors import ImageNotFound
from vmdisk.host import Host
from vmdisk.imagecache.oci import Reference, host_platform
from vmdisk.imagecache.records import cache_name
from vmdisk.imagecache.store import CachedImage

PULLING_COMMANDS = ("create", "rescue")


def _registry_options() -> list[click.Option]:
    return [
        click.Option(
            ["--insecure-registry"],
            multiple=True,
            metavar="HOST:PORT",
            help="Talk plain http to this loopback registry (repeatable).",
        ),
        click.Option(
            ["--platform"],
            metavar="OS/ARCH",
            help="Platform to pick from a multi-arch OCI index (default: this host's).",
        ),
    ]


def apply_registry_flags(a: AppContext, insecure: tuple[str, ...], platform: str | None) -> None:
    """Fold the flags into the settings once, before anything builds the Host from them."""
    if not insecure and not platform:
        return
    oci = a.settings.oci
    oci = dataclasses.replace(
        oci,
        insecure_registries=(*oci.insecure_registries, *insecure),
        platform=platform or oci.platform,
    )
    a._settings = dataclasses.replace(a.settings, oci=oci)


def with_registry_flags(command: click.Command) -> None:
    """Add the two flags to an existing command; its own callback never sees them."""
    inner: Callable[..., Any] | None = command.callback
    if inner is None or any(p.name == "insecure_registry" for p in command.params):
        return
    command.params.extend(_registry_options())

    @functools.wraps(inner)
    def callback(*args: Any, insecure_registry: tuple[str, ...], platform: str | None,
                 **kwargs: Any) -> Any:  # fmt: skip
        apply_registry_flags(app(click.get_current_context()), insecure_registry, platform)
        return inner(*args, **kwargs)

    command.callback = callback


def find_base(host: Host, ref: str) -> CachedImage:
    """A cached base by image id or by its `_base` name (40 hex digits)."""
    for name in (cache_name(ref), ref):
        found = host.cache.lookup(name)
        if found is not None and found.record.kind == "image":
            return found
    raise ImageNotFound(
        f"no cached image {ref!r} on this host",
        hint="see `vmdisk cache list`; fetch it first with `vmdisk image fetch`",
        reason="not-cached",
    )


@click.command("push")
@click.argument("image")
@click.argument("target")
@click.pass_context
def push(ctx: click.Context, image: str, target: str) -> None:
    """Publish cached IMAGE (id or _base name) as a KubeVirt containerDisk at TARGET.

    TARGET is oci://REGISTRY/REPO:TAG. Prints the manifest digest; blobs the registry already
    has are not uploaded again.
    """
    from vmdisk.imagecache.oci_push import push_base  # requests: only a push pays for it
    from vmdisk.imagecache.oci_source import registry_client
    from vmdisk.imagecache.registry import http_options

    a = app(ctx)
    ref = Reference.parse(target)
    settings = a.settings
    host = a.host
    cached = find_base(host, image)
    c = settings.image_cache
    client = registry_client(ref.registry, settings.oci, options=http_options(c))
    with host.locks.shared(cached.name):
        result = push_base(
            client,
            host.runner,
            ref,
            cached.path,
            cached.record,
            platform=settings.oci.platform or host_platform(),
        )

    def human(out: Console) -> None:
        out.print(f"pushed: {result.reference}")
        out.print(f"  digest   {result.digest}")
        out.print(f"  uploaded {len(result.uploaded)} blobs, {len(result.skipped)} already there")

    a.output.emit(result.to_dict(), human)


def register(cli: click.Group) -> None:
    image_group.add_command(push)
    with_registry_flags(push)
    fetch = image_group.commands.get("fetch")
    for command in (fetch, *(cli.commands.get(n) for n in PULLING_COMMANDS)):
        if command is not None:
            with_registry_flags(command)
