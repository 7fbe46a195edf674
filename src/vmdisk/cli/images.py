"""`vmdisk image ...` and `vmdisk cache ...` commands."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from vmdisk.cli.context import app
from vmdisk.imagecache.inspect import ALLOWED_FORMATS
from vmdisk.imagecache.listing import ImageRow
from vmdisk.imagecache.probe import Probe
from vmdisk.imagecache.snapshot import EXPORT_FORMATS
from vmdisk.request import image_request
from vmdisk.units import format_size

if TYPE_CHECKING:
    from vmdisk.backends.base import VolumePrune

F = TypeVar("F", bound=Callable[..., Any])


def intake_options(id_flag: str) -> Callable[[F], F]:
    """The options every command that takes an image shares (fetch, create, rescue)."""
    options = [
        click.option(id_flag, "image_id", help="Image id (default: the normalised source)."),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(ALLOWED_FORMATS),
            help="Declared format; the content must agree.",
        ),
        click.option("--checksum", help="ALGO:HEX (sha256, sha512, sha1, md5) of the download."),
        click.option("--max-size", help="Refuse images whose virtual size is larger (e.g. 50G)."),
    ]

    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


@click.group("image")
def image_group() -> None:
    """Fetch, list, name, refresh and remove the images in the _base cache."""


def json_flag(func: F) -> F:
    """`--json` after the subcommand too (`vmdisk image list --json`), as after `vmdisk`."""

    def enable(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            app(ctx).output.json_mode = True

    option = click.option(
        "--json", is_flag=True, expose_value=False, callback=enable, help="Print JSON."
    )
    return option(func)


@image_group.command("fetch")
@click.argument("source")
@intake_options("--id")
@click.option(
    "--replace",
    is_flag=True,
    help="Let SOURCE take over a cached entry of the same id that came from another source "
    "or fails the pins (refused while an instance uses it).",
)
@click.option(
    "--dry-run", is_flag=True, help="Say what it is and if it is cached; download nothing."
)
@json_flag
@click.pass_context
def fetch(
    ctx: click.Context,
    source: str,
    image_id: str | None,
    fmt: str | None,
    checksum: str | None,
    max_size: str | None,
    replace: bool,
    dry_run: bool,
) -> None:
    """Cache SOURCE (alias, image id, path, file://, http(s)://, glance://; .xz/.gz/.zst are
    decompressed as they stream) in _base, verified and converted to raw."""
    a = app(ctx)
    request = image_request(source, image_id, fmt, checksum, max_size)
    if dry_run:
        found = a.host.probe_image(request)
        a.output.emit(found.to_dict(), lambda out: _print_probe(out, found))
        return
    cached = a.host.fetch_image(dataclasses.replace(request, replace=replace))

    def human(out: Console) -> None:
        state = "already cached" if cached.cached else "cached"
        out.print(f"{state}: {cached.image_id}")
        out.print(f"  base     {cached.path}")
        out.print(f"  format   {cached.record.format} (was {cached.record.detected_format})")
        out.print(f"  size     {format_size(cached.record.virtual_size)}")
        out.print(f"  sha256   {cached.record.sha256}")

    a.output.emit(cached.to_dict(), human)


def _print_probe(out: Console, p: Probe) -> None:
    def size(n: int | None) -> str:
        return format_size(n) if n is not None else "unknown until downloaded"

    state = "cached" if p.cached else "not cached"
    out.print(f"{p.image_id}: {state} (dry run: nothing downloaded)")
    out.print(f"  source   {p.source}" + (f" ({p.compression})" if p.compression else ""))
    out.print(f"  format   {p.format or '-'}")
    out.print(f"  virtual  {size(p.virtual_size)}")
    if not p.cached:
        out.print(f"  download {size(p.download_size)}")


def _row_lines(out: Console, row: ImageRow) -> None:
    d = row.to_dict()
    title = row.image_id or f"(retired {d['retired_from']})"
    out.print(f"image    {title}")
    for label, key in (
        ("aliases", "aliases"),
        ("source", "source"),
        ("base", "base"),
        ("kind", "kind"),
        ("format", "format"),
        ("sha256", "sha256"),
        ("fetched", "fetched_at"),
        ("used", "last_used"),
        ("users", "users"),
        ("shares", "shared_with"),
    ):
        value = d[key]
        if isinstance(value, list):
            value = ", ".join(value) or "-"
        out.print(f"  {label:<8} {value}")
    out.print(
        f"  {'size':<8} {format_size(d['virtual_size'])} virtual, "
        f"{format_size(d['allocated'])} allocated"
        + (f" ({d['sharing']} with {len(d['shared_with'])})" if d["sharing"] else "")
    )


@image_group.command("list")
@json_flag
@click.pass_context
def image_list(ctx: click.Context) -> None:
    """List cached images: id, aliases, source, format, sizes, sha256, dates and users."""
    a = app(ctx)
    rows = a.host.images()

    def human(out: Console) -> None:
        table = Table(
            "image id",
            "aliases",
            "source",
            "format",
            "virtual",
            "allocated",
            "sha256",
            "fetched",
            "last used",
            "users",
        )
        for row in rows:
            r = row.record
            table.add_row(
                row.image_id or "(retired)",
                ", ".join(row.aliases) or "-",
                r.source,
                r.format,
                format_size(r.virtual_size),
                format_size(row.allocated) + (f" ({row.sharing})" if row.sharing else ""),
                r.sha256[:12],
                r.fetched_at,
                row.last_used,
                ", ".join(row.users) or "-",
            )
        out.print(table)

    a.output.emit({"images": [row.to_dict() for row in rows]}, human)


@image_group.command("show")
@click.argument("ref", metavar="ID|ALIAS")
@json_flag
@click.pass_context
def image_show(ctx: click.Context, ref: str) -> None:
    """One cached image, by id, alias, or a unique prefix of its name or sha256."""
    a = app(ctx)
    row = a.host.image(ref)
    a.output.emit(row.to_dict(), lambda out: _row_lines(out, row))


@image_group.command("rm")
@click.argument("ref", metavar="ID|ALIAS")
@json_flag
@click.pass_context
def image_rm(ctx: click.Context, ref: str) -> None:
    """Remove an image, its record and aliases. Refused while any instance uses it.

    There is no --force: an overlay whose base is gone cannot be read, so removing a base in
    use would destroy its instances. Delete them first (or `image refresh` to move on).
    """
    a = app(ctx)
    row, aliases = a.host.remove_image(ref)
    data = {"removed": row.image_id or row.name, "base": str(row.path), "aliases": aliases}

    def human(out: Console) -> None:
        out.print(f"removed {data['removed']} ({row.path})")
        if aliases:
            out.print(f"  aliases removed: {', '.join(aliases)}")

    a.output.emit(data, human)


@image_group.command("refresh")
@click.argument("ref", metavar="ID|ALIAS")
@json_flag
@click.pass_context
def image_refresh(ctx: click.Context, ref: str) -> None:
    """Fetch an image's source again. Instances keep the base they were made from: it stays,
    unnamed, until the cleaner ages it out once unused."""
    a = app(ctx)
    result = a.host.refresh_image(ref)

    def human(out: Console) -> None:
        if not result.changed:
            out.print(f"{result.image_id}: unchanged (sha256 {result.new_sha256[:12]})")
            return
        out.print(
            f"{result.image_id}: refreshed, sha256 {result.old_sha256[:12]} -> "
            f"{result.new_sha256[:12]}"
        )
        if result.retired:
            out.print(
                f"  the old base stays as {result.retired[:12]} for "
                f"{len(result.rebased)} disk(s); pruned once unused"
            )

    a.output.emit(result.to_dict(), human)


@image_group.group("alias")
def alias_group() -> None:
    """Short names for image ids: `--image NAME` tries aliases first."""


@alias_group.command("set")
@click.argument("name")
@click.argument("ref", metavar="ID|ALIAS")
@json_flag
@click.pass_context
def alias_set(ctx: click.Context, name: str, ref: str) -> None:
    """Point alias NAME at a cached image (moving it if it named another)."""
    a = app(ctx)
    image_id, before = a.host.set_alias(name, ref)
    data = {"alias": name, "image_id": image_id, "previous": before}

    def human(out: Console) -> None:
        moved = f" (was {before})" if before and before != image_id else ""
        out.print(f"{name} -> {image_id}{moved}")

    a.output.emit(data, human)


@alias_group.command("rm")
@click.argument("name")
@json_flag
@click.pass_context
def alias_rm(ctx: click.Context, name: str) -> None:
    """Remove an alias (the image stays)."""
    a = app(ctx)
    image_id = a.host.remove_alias(name)
    a.output.emit(
        {"alias": name, "image_id": image_id},
        lambda out: out.print(f"removed alias {name} (was {image_id})"),
    )


@alias_group.command("list")
@json_flag
@click.pass_context
def alias_list(ctx: click.Context) -> None:
    """Every alias and the image id it names."""
    a = app(ctx)
    aliases = a.host.aliases.all()

    def human(out: Console) -> None:
        for name, image_id in aliases.items():
            out.print(f"{name} -> {image_id}")

    a.output.emit({"aliases": aliases}, human)


@image_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--id", "image_id", required=True, help="The image id to cache it as.")
@click.option("--format", "fmt", type=click.Choice(ALLOWED_FORMATS), help="Declared format.")
@click.option("--checksum", help="ALGO:HEX of the file.")
@json_flag
@click.pass_context
def image_import(
    ctx: click.Context, file: Path, image_id: str, fmt: str | None, checksum: str | None
) -> None:
    """Cache FILE (an export from another host) as image ID: the same intake as fetch."""
    a = app(ctx)
    cached = a.host.fetch_image(image_request(str(file), image_id, fmt, checksum, None))
    a.output.emit(cached.to_dict(), lambda out: out.print(f"imported {cached.image_id}"))


@image_group.command("export")
@click.argument("ref", metavar="ID|ALIAS")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="qcow2", show_default=True
)
@click.option("--compress", is_flag=True, help="qcow2 with compressed clusters.")
@json_flag
@click.pass_context
def image_export(ctx: click.Context, ref: str, file: Path, fmt: str, compress: bool) -> None:
    """Write a cached image to FILE (never overwritten) to move it to another host."""
    a = app(ctx)
    dest = a.host.export_image(ref, file, fmt, compress)
    data = {
        "exported": ref,
        "file": str(dest),
        "format": fmt,
        "compressed": compress,
        "size": dest.stat().st_size,
    }
    a.output.emit(data, lambda out: out.print(f"exported {ref} to {dest} ({fmt})"))


@click.command("snapshot")
@click.argument("name")
@click.option("--image-id", "image_id", required=True, help="Id of the new image.")
@click.option("--alias", help="Also name the new image with this alias.")
@json_flag
@click.pass_context
def snapshot_cmd(ctx: click.Context, name: str, image_id: str, alias: str | None) -> None:
    """Turn instance NAME's root disk into a new raw image in _base (refused while it runs);
    `vmdisk create --image IMAGE_ID` then uses it."""
    a = app(ctx)
    cached = a.host.snapshot_instance(name, image_id, alias)
    data = {**cached.to_dict(), "alias": alias}

    def human(out: Console) -> None:
        out.print(f"snapshot of {name}: image {cached.image_id}" + (f" ({alias})" if alias else ""))
        out.print(f"  base     {cached.path}")
        out.print(f"  size     {format_size(cached.record.virtual_size)}")

    a.output.emit(data, human)


@click.command("clone")
@click.argument("name")
@click.argument("new")
@click.option("--uuid", "uuid_text", help="The clone's uuid (default: a new random one).")
@json_flag
@click.pass_context
def clone_cmd(ctx: click.Context, name: str, new: str, uuid_text: str | None) -> None:
    """A new instance NEW whose disks start as NAME's: new uuid, MAC and config drive."""
    a = app(ctx)
    inst = a.host.clone_instance(name, new, uuid_text)
    data = a.host.describe(inst)
    a.output.emit(data, lambda out: out.print(f"cloned {name} as {new} ({inst.record.uuid})"))


@click.group("cache")
def cache_group() -> None:
    """Inspect and prune the _base cache."""


@cache_group.command("list")
@click.pass_context
def cache_list(ctx: click.Context) -> None:
    """List cached bases: image id, format, sizes, last use and users."""
    a = app(ctx)
    listing = a.host.cache_listing()
    data = listing.to_dict()

    def human(out: Console) -> None:
        table = Table(
            "name", "image id", "format", "virtual", "allocated", "last used", "users", "shares"
        )
        for entry in listing.entries:
            table.add_row(
                entry.name[:12],
                entry.image_id or "-",
                entry.format or "-",
                format_size(entry.virtual_size) if entry.virtual_size else "-",
                format_size(entry.allocated),
                entry.last_used,
                str(len(entry.users)),
                _shares(entry.shared_with, entry.sharing),
            )
        out.print(table)
        out.print(f"total allocated: {format_size(listing.total_allocated)}")

    a.output.emit(data, human)


def _shares(names: list[str], how: str | None) -> str:
    if not names:
        return "-"
    return f"{how} " + ", ".join(n[:12] for n in names)


@cache_group.command("prune")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.pass_context
def cache_prune(ctx: click.Context, dry_run: bool) -> None:
    """Remove unused bases past their age (and LRU over [image_cache] max_size).

    With images_type = "lvm", base LVs (vmdisk_base_*) whose base goes, and that no volume
    snapshots, go too."""
    a = app(ctx)
    outcome = a.host.prune_all(dry_run=dry_run)
    plan, result, volumes = outcome.plan, outcome.result, outcome.volumes
    data = {
        "dry_run": dry_run,
        "plan": {
            **plan.to_dict(),
            "volumes": [v.to_dict() for v in volumes.decisions],
            "volumes_would_free": volumes.would_free,
        },
        "result": {**result.to_dict(), "volumes": volumes.result_dict()} if result else None,
    }

    def human(out: Console) -> None:
        table = Table("entry", "kind", "action", "age", "allocated", "why")
        for d in plan.decisions:
            table.add_row(
                d.name,
                str(d.kind),
                str(d.action),
                f"{d.age / 3600:.1f} h",
                format_size(d.allocated),
                d.reason,
            )
        _volume_rows(table, volumes)
        out.print(table)
        if result is None:
            freed = format_size(plan.freed)
            if volumes.decisions:
                freed += f" in _base and {format_size(volumes.would_free)} in base volumes"
            out.print(f"dry run: would free {freed}; nothing was changed")
            return
        out.print(
            f"removed {len(result.removed)}, kept on re-check "
            f"{len(result.kept_on_recheck)}, errors {len(result.errors)}"
        )
        if volumes.decisions:
            out.print(
                f"base volumes: removed {len(volumes.removed)}, kept on re-check "
                f"{len(volumes.kept_on_recheck)}, errors {len(volumes.errors)}"
            )
        for name, error in {**result.errors, **volumes.errors}.items():
            out.print(f"  [red]error[/] {name}: {error}")

    a.output.emit(data, human)


def _volume_rows(table: Table, volumes: VolumePrune) -> None:
    """The backend's base volumes (thin base LVs), after the _base entries."""
    for v in volumes.decisions:
        age = "-" if v.age is None else f"{v.age / 3600:.1f} h"
        size = "-" if v.allocated is None else format_size(v.allocated)
        table.add_row(v.name, "base volume", str(v.action), age, size, v.reason)


@cache_group.command("verify")
@click.pass_context
def cache_verify(ctx: click.Context) -> None:
    """Re-hash every base against its record and re-run the safety checks (reports only)."""
    a = app(ctx)
    verdicts = a.host.verify_cache()
    data = {"ok": all(v.ok for v in verdicts), "entries": [v.to_dict() for v in verdicts]}

    def human(out: Console) -> None:
        for v in verdicts:
            state = "[green]ok[/]" if v.ok else "[red]FAILED[/]"
            out.print(f"{state} {v.name} {v.image_id or ''}")
            for problem in v.problems:
                out.print(f"    {problem}")

    a.output.emit(data, human)
    if not data["ok"]:
        ctx.exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(image_group)
    cli.add_command(cache_group)
    cli.add_command(snapshot_cmd)
    cli.add_command(clone_cmd)
