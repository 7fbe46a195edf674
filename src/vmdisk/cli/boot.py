"""`vmdisk xml` and `vmdisk boot`: the domain of an instance, and a real guest from it."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from vmdisk.boot import STOP_GRACE
from vmdisk.cli.context import app
from vmdisk.libvirt.domain import render
from vmdisk.model import BootOptions
from vmdisk.validate import check_cmdline


@click.command("xml")
@click.argument("ref", metavar="NAME|UUID")
@click.option("--rescue/--no-rescue", default=None, help="The rescue variant (default: as is).")
@click.pass_context
def xml(ctx: click.Context, ref: str, rescue: bool | None) -> None:
    """Print the instance's libvirt domain XML."""
    a = app(ctx)
    text = render(a.host.domain(ref, rescue=rescue))

    def human(out: Console) -> None:
        sys.stdout.write(text)

    a.output.emit({"xml": text}, human)


@click.command("boot")
@click.argument("ref", metavar="NAME|UUID")
@click.option("--via", type=click.Choice(["qemu", "libvirt"]), default="qemu", show_default=True)
@click.option("--kernel", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--initrd", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cmdline")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True)
@click.option("--wait-for", help="Stop once the console shows this text.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=STOP_GRACE,
    show_default=True,
    help="Seconds a guest still running at the end gets to power off before it is killed.",
)
@click.option("--keep", is_flag=True, help="libvirt: leave the domain defined afterwards.")
@click.option("--rescue/--no-rescue", default=None, help="Boot the rescue variant.")
@click.option("--uri", default="qemu:///system", show_default=True, help="libvirt URI.")
@click.pass_context
def boot(
    ctx: click.Context,
    /,
    ref: str,
    via: str,
    kernel: Path | None,
    initrd: Path | None,
    cmdline: str | None,
    timeout: float,
    wait_for: str | None,
    grace: float,
    keep: bool,
    rescue: bool | None,
    uri: str,
) -> None:
    """Smoke-test the instance: boot it (TCG unless KVM works), follow its console, stop it.

    Exits 1 on --timeout, or when --wait-for was given and never showed. A guest still running
    at the end gets the ACPI power button, and is killed only if it does not power off."""
    if initrd is not None and kernel is None:
        raise click.UsageError("--initrd needs --kernel")
    a = app(ctx)
    options = BootOptions(
        via=via,
        timeout=timeout,
        wait_for=wait_for,
        keep=keep,
        rescue=rescue,
        kernel=kernel.absolute() if kernel else None,
        initrd=initrd.absolute() if initrd else None,
        cmdline=check_cmdline(cmdline) if cmdline is not None else None,
        uri=uri,
    )
    stream = None if a.output.json_mode else _to_terminal
    result = a.host.boot(ref, options, stream, grace=grace)
    if not a.output.json_mode:
        sys.stdout.write("\n")
    result.check(wait_for)  # a timeout, or --wait-for never seen, exits 1

    def human(out: Console) -> None:
        out.print(
            f"[bold]{ref}[/]: {result.reason} after {result.duration:.1f} s (via {result.via})"
        )

    a.output.emit(result.to_dict(), human)


def _to_terminal(data: bytes) -> None:
    sys.stdout.write(data.decode("utf-8", "replace"))
    sys.stdout.flush()


def register(cli: click.Group) -> None:
    cli.add_command(xml)
    cli.add_command(boot)
