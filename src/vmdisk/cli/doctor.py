"""`vmdisk doctor [--fix]`: what crashed processes left in instances_path, and removing it."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from vmdisk.cli.context import app
from vmdisk.doctor import Doctor, Finding


@click.command("doctor")
@click.option("--fix", is_flag=True, help="Remove what is safe to remove (never anything in use).")
@click.pass_context
def doctor(ctx: click.Context, fix: bool) -> None:
    """Report stale locks, build and .deleting-* directories, name entries, old temporaries."""
    a = app(ctx)
    host = a.host
    host.prepare()
    checker = Doctor(
        host.store,
        host.locks,
        a.settings.base_dir,
        a.settings.image_cache.remove_temporary_minimum_age_seconds,
    )
    findings = checker.run(fix=fix)
    left = [f for f in findings if f.removable and not f.removed]
    a.output.emit(
        {"fix": fix, "clean": not left, "findings": [f.to_dict() for f in findings]},
        lambda out: _print(out, findings, fix),
    )


def _print(out: Console, findings: list[Finding], fix: bool) -> None:
    if not findings:
        out.print("nothing left behind")
        return
    table = Table("kind", "path", "what", "action")
    for f in findings:
        action = "removed" if f.removed else "would remove" if f.removable else "left alone"
        table.add_row(f.kind, str(f.path), f.detail, action)
    out.print(table)
    if not fix and any(f.removable for f in findings):
        out.print("run vmdisk doctor --fix to remove them")


def register(cli: click.Group) -> None:
    cli.add_command(doctor)
