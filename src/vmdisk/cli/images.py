"""`vmdisk image ...` and `vmdisk cache ...` commands."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from vmdisk.cli.context import app
from vmdisk.imagecache.inspect import ALLOWED_FORMATS
from vmdisk.request import image_request
from vmdisk.units import format_size

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
    """Fetch images into the _base cache."""


@image_group.command("fetch")
@click.argument("source")
@intake_options("--id")
@click.option(
    "--replace",
    is_flag=True,
    help="Let SOURCE take over a cached entry of the same id that came from another source "
    "or fails the pins (refused while an instance uses it).",
)
@click.pass_context
def fetch(
    ctx: click.Context,
    source: str,
    image_id: str | None,
    fmt: str | None,
    checksum: str | None,
    max_size: str | None,
    replace: bool,
) -> None:
    """Cache SOURCE (path, file://, http(s)://) in _base, verified and converted to raw."""
    a = app(ctx)
    request = image_request(source, image_id, fmt, checksum, max_size)
    cached = a.host.fetch_image(dataclasses.replace(request, replace=replace))

    def human(out: Console) -> None:
        state = "already cached" if cached.cached else "cached"
        out.print(f"{state}: {cached.image_id}")
        out.print(f"  base     {cached.path}")
        out.print(f"  format   {cached.record.format} (was {cached.record.detected_format})")
        out.print(f"  size     {format_size(cached.record.virtual_size)}")
        out.print(f"  sha256   {cached.record.sha256}")

    a.output.emit(cached.to_dict(), human)


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
        table = Table("name", "image id", "format", "virtual", "allocated", "last used", "users")
        for entry in listing.entries:
            table.add_row(
                entry.name[:12],
                entry.image_id or "-",
                entry.format or "-",
                format_size(entry.virtual_size) if entry.virtual_size else "-",
                format_size(entry.allocated),
                entry.last_used,
                str(len(entry.users)),
            )
        out.print(table)
        out.print(f"total allocated: {format_size(listing.total_allocated)}")

    a.output.emit(data, human)


@cache_group.command("prune")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.pass_context
def cache_prune(ctx: click.Context, dry_run: bool) -> None:
    """Remove unused bases past their age (and LRU over [image_cache] max_size)."""
    a = app(ctx)
    plan, result = a.host.prune(dry_run=dry_run)
    data = {
        "dry_run": dry_run,
        "plan": plan.to_dict(),
        "result": result.to_dict() if result else None,
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
        out.print(table)
        if result is None:
            out.print(f"dry run: would free {format_size(plan.freed)}; nothing was changed")
            return
        out.print(
            f"removed {len(result.removed)}, kept on re-check "
            f"{len(result.kept_on_recheck)}, errors {len(result.errors)}"
        )
        for name, error in result.errors.items():
            out.print(f"  [red]error[/] {name}: {error}")

    a.output.emit(data, human)


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
