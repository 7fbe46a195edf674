"""`vmdisk create|list|show|delete|resize|rescue|unrescue`: instances on this host."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from vmdisk import lifecycle
from vmdisk.backends import BACKENDS
from vmdisk.cli.context import app
from vmdisk.cli.images import intake_options
from vmdisk.instances import Instance
from vmdisk.model import BackendName, OsType
from vmdisk.request import (
    CreateOptions,
    Nic,
    boot_file,
    boot_requests,
    build_spec,
    image_request,
    key_values,
)
from vmdisk.units import format_size

F = TypeVar("F", bound=Callable[..., Any])


def boot_file_options(func: F) -> F:
    """--kernel/--kernel-id/--ramdisk/--ramdisk-id, shared by create and rescue."""
    options = [
        click.option(
            "--kernel", "kernel_source", help="Boot this kernel (path or URL), the AMI way."
        ),
        click.option(
            "--kernel-id", help="Image id of the kernel (default: the normalised source)."
        ),
        click.option("--ramdisk", "ramdisk_source", help="Its ramdisk (initrd)."),
        click.option("--ramdisk-id", help="Image id of the ramdisk."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command("create")
@click.argument("name")
@click.option("--image", "source", required=True, help="Image: path, file://, http(s)://.")
@intake_options("--image-id")
@click.option("--flavor", "flavor_name", help="m1.tiny ... m1.xlarge or [flavors.NAME].")
@click.option("--vcpus", type=int)
@click.option("--ram-mb", type=int)
@click.option("--root-gb", type=int, help="0 means the image's own size.")
@click.option("--ephemeral-gb", type=int)
@click.option("--swap-mb", type=int)
@click.option(
    "--ephemeral",
    "ephemerals",
    type=int,
    multiple=True,
    metavar="SIZE_GB",
    help="An extra ephemeral disk (repeatable); replaces the flavor's disk.local.",
)
@click.option("--uuid", "uuid_text")
@click.option("--os-type", type=click.Choice([o.value for o in OsType]), default="linux")
@click.option("--backend", type=click.Choice(sorted(str(b) for b in BACKENDS)))
@click.option("--config-drive", is_flag=True, help="Build disk.config (config-2).")
@click.option("--seed", type=click.Choice(["config-2", "nocloud"]), help="Drive flavour.")
@click.option("--user-data", type=click.Path(dir_okay=False))
@click.option("--ssh-key", type=click.Path(dir_okay=False), multiple=True)
@click.option(
    "--ssh-user", help="Who `vmdisk ssh` logs in as (default root, or the image's own user)."
)
@click.option("--admin-pass")
@click.option("--inject-file", multiple=True, metavar="GUEST_PATH=HOST_FILE")
@click.option("--meta", multiple=True, metavar="KEY=VALUE")
@click.option("--hostname")
@click.option("--network-data", type=click.Path(dir_okay=False))
@click.option("--nic", multiple=True, metavar="mac=..,ip=..,gateway=..")
@click.option(
    "--inject-key",
    type=click.Path(dir_okay=False),
    multiple=True,
    help="Authorized key for root (into the drive, or the disk without one).",
)
@click.option("--inject-password", help="Root password (into the drive, or the disk).")
@click.option(
    "--inject-network",
    type=click.Path(dir_okay=False),
    help="A network template written as /etc/network/interfaces.",
)
@boot_file_options
@click.option("--cmdline", help='Kernel command line (default "root=/dev/vda console=ttyS0").')
@click.option("--dry-run", is_flag=True, help="Print the plan; touch nothing.")
@click.pass_context
def create(
    ctx: click.Context,
    /,
    name: str,
    source: str,
    dry_run: bool,
    ssh_user: str | None,
    **flags: Any,
) -> None:
    """Create instance NAME: cache the image, then make its disks and directory."""
    a = app(ctx)
    built = build_spec(a.settings, create_options(name, source, flags))
    if dry_run:
        image, boot = a.host.resolve(built.image), a.host.resolve_boot_files(built.boot_files)
        plan = a.host.plan(built.spec, image, boot)
        found = a.host.probe_resolved(image, built.spec.flavor.root_gb)
        a.output.emit(
            {"dry_run": True, **plan.to_dict(), "image": found.to_dict()},
            lambda out: _print_plan(out, plan, found),
        )
        return
    inst = a.host.create_instance(built.spec, built.image, built.boot_files)
    if ssh_user or flags["ssh_key"]:
        a.host.remember_ssh(inst.record.uuid, ssh_user, [Path(k) for k in flags["ssh_key"]])
    data = a.host.describe(inst)
    if built.generated_password is not None:
        data["admin_pass"] = built.generated_password  # shown once, like Nova's API; never logged
    a.output.emit(data, lambda out: _print_instance(out, data, created=True))


def create_options(name: str, source: str, f: dict[str, Any]) -> CreateOptions:
    """The create flags as CreateOptions: KEY=VALUE split, paths typed, nothing decided."""
    return CreateOptions(
        name=name,
        image=source,
        image_id=f["image_id"],
        image_format=f["fmt"],
        checksum=f["checksum"],
        max_size=f["max_size"],
        uuid=f["uuid_text"],
        flavor=f["flavor_name"],
        vcpus=f["vcpus"],
        ram_mb=f["ram_mb"],
        root_gb=f["root_gb"],
        ephemeral_gb=f["ephemeral_gb"],
        swap_mb=f["swap_mb"],
        ephemerals=tuple(f["ephemerals"]),
        os_type=OsType(f["os_type"]),
        backend=BackendName(f["backend"]) if f["backend"] else None,
        config_drive=f["config_drive"],
        seed=f["seed"],
        user_data=_path(f["user_data"]),
        ssh_keys=tuple(Path(p) for p in f["ssh_key"]),
        admin_pass=f["admin_pass"],
        meta=key_values(f["meta"], "--meta"),
        hostname=f["hostname"],
        network_data=_path(f["network_data"]),
        nics=tuple(Nic.parse(text) for text in f["nic"]),
        inject_files=tuple(
            (guest, Path(host)) for guest, host in key_values(f["inject_file"], "--inject-file")
        ),
        inject_keys=tuple(Path(p) for p in f["inject_key"]),
        inject_password=f["inject_password"],
        inject_network=_path(f["inject_network"]),
        kernel=boot_file(f["kernel_source"], f["kernel_id"]),
        ramdisk=boot_file(f["ramdisk_source"], f["ramdisk_id"]),
        cmdline=f["cmdline"],
    )


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


def _print_plan(out: Console, plan: Any, image: Any) -> None:
    out.print(
        f"[bold]plan for {plan.name}[/] ({plan.uuid}), backend {plan.backend}, nothing was written"
    )
    size = format_size(image.virtual_size) if image.virtual_size is not None else "unknown"
    state = "cached" if image.cached else "not cached (would be fetched)"
    out.print(f"image {image.image_id}: {image.format or 'format unknown'}, {size}, {state}")
    table = Table("disk", "format", "size", "base in _base", "label")
    for d in plan.disks:
        size = format_size(d.size) if d.size else "image size"
        table.add_row(str(d.path), d.format, size, d.base or "-", d.label or "-")
    out.print(table)


def _print_instance(out: Console, data: dict[str, Any], created: bool = False) -> None:
    verb = "created" if created else "instance"
    out.print(f"[bold]{verb} {data['name']}[/] ({data['uuid']})")
    out.print(f"  path     {data['path']}")
    out.print(
        f"  backend  {data['backend']}   flavor {data['flavor']['name']}   image {data['image_id']}"
    )
    table = Table("disk", "format", "virtual", "allocated", "backing file")
    for d in data["disks"]:
        table.add_row(
            d["name"],
            d["format"],
            format_size(d["virtual_size"]) if d.get("virtual_size") else "-",
            format_size(d["allocated"]) if d.get("allocated") is not None else "-",
            d.get("backing_file") or "-",
        )
    out.print(table)


@click.command("list")
@click.pass_context
def list_cmd(ctx: click.Context) -> None:
    """List instances on this host."""
    a = app(ctx)
    rows = [
        {**lifecycle.summary(i), "state": str(a.host.guests.status(i).state)}
        for i in a.host.instances()
    ]

    def human(out: Console) -> None:
        table = Table("name", "state", "uuid", "flavor", "backend", "image", "created")
        for r in rows:
            table.add_row(
                r["name"],
                r["state"],
                r["uuid"],
                r["flavor"]["name"],
                r["backend"],
                r["image_id"],
                r["created_at"],
            )
        out.print(table)

    a.output.emit(rows, human)


@click.command("show")
@click.argument("ref", metavar="NAME|UUID")
@click.pass_context
def show(ctx: click.Context, ref: str) -> None:
    """Show an instance and its disks (format, sizes, backing file)."""
    a = app(ctx)
    data = a.host.describe(a.host.instance(ref))
    a.output.emit(data, lambda out: _print_instance(out, data))


@click.command("delete")
@click.argument("ref", metavar="NAME|UUID")
@click.option("--force", is_flag=True, help="Stop a running guest first (then delete).")
@click.pass_context
def delete(ctx: click.Context, ref: str, force: bool) -> None:
    """Delete an instance directory (never anything in _base). A running one is refused."""
    a = app(ctx)
    inst: Instance = a.host.delete_instance(ref, force=force)
    a.output.emit(
        {"deleted": inst.record.name, "uuid": inst.record.uuid},
        lambda out: out.print(f"deleted {inst.record.name} ({inst.record.uuid})"),
    )


@click.command("resize")
@click.argument("ref", metavar="NAME|UUID")
@click.option("--root-gb", type=click.IntRange(min=0))
@click.option("--ephemeral-gb", type=click.IntRange(min=0))
@click.pass_context
def resize(ctx: click.Context, ref: str, root_gb: int | None, ephemeral_gb: int | None) -> None:
    """Grow the root (and ephemeral) disk. Shrinking, and a running guest, are refused."""
    if root_gb is None and ephemeral_gb is None:
        raise click.UsageError("give --root-gb and/or --ephemeral-gb")
    a = app(ctx)
    data = a.host.describe(a.host.resize_instance(ref, root_gb, ephemeral_gb))
    a.output.emit(data, lambda out: _print_instance(out, data))


@click.command("rescue")
@click.argument("ref", metavar="NAME|UUID")
@click.option("--image", "source", help="Rescue image (default: the instance's own).")
@intake_options("--image-id")
@boot_file_options
@click.pass_context
def rescue(
    ctx: click.Context,
    ref: str,
    source: str | None,
    image_id: str | None,
    fmt: str | None,
    checksum: str | None,
    max_size: str | None,
    kernel_source: str | None,
    kernel_id: str | None,
    ramdisk_source: str | None,
    ramdisk_id: str | None,
) -> None:
    """Create disk.rescue (and kernel.rescue/ramdisk.rescue); the instance's disk is untouched.

    Refused while the guest runs: stop it, rescue, start it (it boots the rescue disk)."""
    a = app(ctx)
    request = image_request(source, image_id, fmt, checksum, max_size) if source else None
    boot_files = boot_requests(
        boot_file(kernel_source, kernel_id), boot_file(ramdisk_source, ramdisk_id)
    )
    data = a.host.describe(a.host.rescue_instance(ref, request, boot_files))
    a.output.emit(data, lambda out: _print_instance(out, data))


@click.command("unrescue")
@click.argument("ref", metavar="NAME|UUID")
@click.pass_context
def unrescue(ctx: click.Context, ref: str) -> None:
    """Remove disk.rescue and leave rescue mode."""
    a = app(ctx)
    data = a.host.describe(a.host.unrescue_instance(ref))
    a.output.emit(data, lambda out: _print_instance(out, data))


def register(cli: click.Group) -> None:
    for command in (create, list_cmd, show, delete, resize, rescue, unrescue):
        cli.add_command(command)
