"""`vmdisk start|stop|status|console|ip|ssh|wait`: the guest of an instance, running."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console

from vmdisk.cli.context import app
from vmdisk.errors import InstanceNotRunning, InvalidRequest, ToolNotFound
from vmdisk.runtime import console as console_io
from vmdisk.runtime.qemu import control_dir
from vmdisk.runtime.state import RuntimeInfo
from vmdisk.tools.runner import PACKAGES, which

REF = click.argument("ref", metavar="NAME|UUID")


@click.command("start")
@REF
@click.option(
    "--via",
    type=click.Choice(["libvirt", "qemu"]),
    help="Default: libvirt when its socket answers, else qemu.",
)
@click.pass_context
def start(ctx: click.Context, ref: str, via: str | None) -> None:
    """Start the instance's guest, detached (its disks stay where create made them)."""
    a = app(ctx)
    result = a.host.start(ref, via)

    def human(out: Console) -> None:
        out.print(f"started {result.name} via {result.via} ({result.why})")
        if result.status.ssh:
            out.print(f"  ssh      {result.status.ssh}")

    a.output.emit(result.to_dict(), human)


@click.command("stop")
@REF
@click.option("--force", is_flag=True, help="Pull the plug at once (no ACPI power-down).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=120,
    show_default=True,
    help="Seconds to wait for the guest to power off before destroying it.",
)
@click.pass_context
def stop(ctx: click.Context, ref: str, force: bool, timeout: float) -> None:
    """Stop the guest: ACPI power button, wait, and destroy only after --timeout or --force."""
    a = app(ctx)
    result = a.host.stop(ref, force=force, timeout=timeout)

    def human(out: Console) -> None:
        if result.was.value == "stopped":
            out.print(f"{result.name} is not running")
        elif result.graceful:
            out.print(f"{result.name} powered off in {result.duration:.1f} s (via {result.via})")
        elif force:
            out.print(f"{result.name} destroyed (--force)")
        else:
            out.print(
                f"{result.name} did not power off within {timeout:.0f} s: destroyed",
                style="yellow",
            )

    a.output.emit(result.to_dict(), human)


@click.command("status")
@REF
@click.pass_context
def status(ctx: click.Context, ref: str) -> None:
    """running, paused, stopped, crashed (or unknown when libvirt does not answer)."""
    a = app(ctx)
    st = a.host.status(ref)

    def human(out: Console) -> None:
        via = f" (via {st.via})" if st.via else ""
        out.print(f"{st.name}: {st.state}{via}" + (f"  ssh {st.ssh}" if st.ssh else ""))
        if st.detail:
            out.print(f"  {st.detail}")

    a.output.emit(st.to_dict(), human)


@click.command("console")
@REF
@click.option("--follow", is_flag=True, help="Print console.log and follow it (no input).")
@click.pass_context
def console(ctx: click.Context, ref: str, follow: bool) -> None:
    """Attach to the serial console (Ctrl-] leaves), or --follow its log."""
    a = app(ctx)
    inst = a.host.instance(ref)
    if follow:
        console_io.follow(
            inst.path / "console.log",
            _write,
            lambda: a.host.status(ref).state.active,
        )
        return
    st = a.host.status(ref)
    if not st.state.active:
        raise InstanceNotRunning(f"{st.name} is {st.state}", reason="not-running")
    info = RuntimeInfo.load(inst.path)
    if info is not None and info.via == "libvirt":
        # ttyS0 by its alias: the first <console> is the virtio one, where no getty runs.
        argv = ["virsh", "-c", info.uri or "qemu:///system", "console", inst.record.uuid]
        _exec([*argv, "--devname", "serial0"])
    sockets = Path(info.control_dir) if info and info.control_dir else None
    sockets = sockets or control_dir(inst.path, inst.record.uuid)
    sys.stderr.write("connected to the console; Ctrl-] leaves\n")
    console_io.attach(sockets / "console.sock")


def _write(data: bytes) -> None:
    sys.stdout.write(data.decode("utf-8", "replace"))
    sys.stdout.flush()


@click.command("ip")
@REF
@click.pass_context
def ip(ctx: click.Context, ref: str) -> None:
    """The guest's address: its DHCP lease (libvirt), or 127.0.0.1 and the forwarded port."""
    a = app(ctx)
    host, port = a.host.address(ref)
    a.output.emit(
        {"host": host, "port": port},
        lambda out: out.print(host if port == 22 else f"{host} port {port}"),
    )


@click.command("ssh", context_settings={"ignore_unknown_options": True})
@REF
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--user", "-l", help="Default: --ssh-user at create, or the image's user.")
@click.option("--identity", "-i", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--insecure", is_flag=True, help="Do not check the guest's host key.")
@click.pass_context
def ssh(
    ctx: click.Context,
    ref: str,
    command: tuple[str, ...],
    user: str | None,
    identity: Path | None,
    insecure: bool,
) -> None:
    """ssh into the guest (`vmdisk ssh NAME -- CMD ...`), checking the host key it printed."""
    a = app(ctx)
    _exec(a.host.ssh_argv(ref, command, user=user, identity=identity, insecure=insecure))


def _exec(argv: list[str]) -> None:
    """Become ssh (or virsh console): the terminal, its signals and the exit code are theirs."""
    exe = which(argv[0])
    if exe is None:
        raise ToolNotFound(
            f"{argv[0]} is not installed",
            argv=argv[:1],
            hint=f"install it with: apt-get install -y {PACKAGES.get(argv[0], argv[0])}",
            reason="tool-not-found",
        )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, argv)  # noqa: S606 - an argv list, no shell: exactly what we want


@click.command("wait")
@REF
@click.option("--ssh", "for_ssh", is_flag=True, help="Until ssh answers (the only condition).")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True)
@click.option("--insecure", is_flag=True, help="Do not wait for the host keys on the console.")
@click.pass_context
def wait(ctx: click.Context, ref: str, for_ssh: bool, timeout: float, insecure: bool) -> None:
    """Wait until the guest answers ssh."""
    if not for_ssh:
        raise InvalidRequest("say what to wait for: --ssh", reason="bad-option")
    a = app(ctx)
    result = a.host.wait_ssh(ref, timeout=timeout, insecure=insecure)
    a.output.emit(
        result.to_dict(),
        lambda out: out.print(f"{result.name}: ssh {result.target} after {result.seconds:.1f} s"),
    )


def register(cli: click.Group) -> None:
    for command in (start, stop, status, console, ip, ssh, wait):
        cli.add_command(command)
