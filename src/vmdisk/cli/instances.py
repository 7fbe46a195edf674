"""`vmdisk create|list|show|delete|resize|rescue|unrescue`: instances on this host."""

from __future__ import annotations

import json
import secrets
import uuid as uuidlib
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from vmdisk import lifecycle
from vmdisk.cli.context import app
from vmdisk.cli.images import image_request, intake_options
from vmdisk.errors import InvalidRequest
from vmdisk.imagecache.store import ImageRequest
from vmdisk.inject import DISABLED as INJECTION_DISABLED
from vmdisk.inject import Injection
from vmdisk.instances import Instance
from vmdisk.model import (
    BackendName,
    ConfigDriveSpec,
    InstanceSpec,
    OsType,
    validate_name,
    validate_uuid,
)
from vmdisk.settings import Flavor, Settings
from vmdisk.units import format_size

USER_DATA_MAX = 65535  # Nova's API limit on user_data
INJECTED_MAX = 10 * 1024 * 1024


def _flavor(
    settings: Settings,
    name: str | None,
    vcpus: int | None,
    ram_mb: int | None,
    root_gb: int | None,
    ephemeral_gb: int | None,
    swap_mb: int | None,
) -> Flavor:
    custom = [vcpus, ram_mb, root_gb, ephemeral_gb, swap_mb]
    if name is not None:
        if any(v is not None for v in custom):
            raise click.UsageError(
                "--flavor cannot be combined with --vcpus/--ram-mb/--root-gb/"
                "--ephemeral-gb/--swap-mb"
            )
        if name not in settings.flavors:
            raise InvalidRequest(
                f"unknown flavor {name!r}",
                reason="bad-flavor",
                hint="known flavors: " + ", ".join(sorted(settings.flavors)),
            )
        return settings.flavors[name]
    if vcpus is None or ram_mb is None or root_gb is None:
        raise click.UsageError("give --flavor NAME, or --vcpus, --ram-mb and --root-gb")
    return Flavor("custom", vcpus, ram_mb, root_gb, ephemeral_gb or 0, swap_mb or 0)


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {what} {path}: {exc.strerror}") from exc
    if len(data) > limit:
        raise InvalidRequest(
            f"{what} {path} is {len(data)} bytes; the limit is {limit}", reason="too-large"
        )
    return data


def _guest_path(text: str) -> str:
    parts = text.split("/")
    if (
        not text.startswith("/")
        or ".." in parts
        or "." in parts
        or "" in parts[1:]
        or "\x00" in text
    ):
        raise InvalidRequest(
            f"guest path {text!r} must be absolute and normalised, without '..'",
            reason="bad-guest-path",
        )
    return text


def _key_value(items: tuple[str, ...], what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"{what} {item!r} must be KEY=VALUE", reason="bad-option")
        pairs.append((key, value))
    return pairs


def _ssh_key(path: Path) -> tuple[str, str]:
    text = _read_limited(path, 16384, "ssh key").decode("utf-8", "replace").strip()
    fields = text.split()
    if len(fields) < 2 or not fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise InvalidRequest(f"{path} is not an OpenSSH public key", reason="bad-key")
    name = fields[2] if len(fields) > 2 else path.stem
    return name, text


def _injected_files(opts: dict[str, Any]) -> list[tuple[str, bytes]]:
    files = []
    total = 0
    for guest, host in _key_value(opts["inject_file"], "--inject-file"):
        content = _read_limited(Path(host), INJECTED_MAX, "injected file")
        total += len(content)
        files.append((_guest_path(guest), content))
    if opts["inject_network"]:
        network = _read_limited(Path(opts["inject_network"]), 1 << 20, "network template")
        files.append(("/etc/network/interfaces", network))
        total += len(network)
    if total > INJECTED_MAX:
        raise InvalidRequest(
            f"injected files total {total} bytes; the limit is {INJECTED_MAX}", reason="too-large"
        )
    return files


def _network_data(opts: dict[str, Any]) -> dict[str, Any] | None:
    from vmdisk.configdrive.metadata import network_data_from_nics, nocloud_network_config

    if opts["network_data"]:
        try:
            data: dict[str, Any] = json.loads(
                _read_limited(Path(opts["network_data"]), 1 << 20, "network data")
            )
        except ValueError as exc:
            raise InvalidRequest(f"{opts['network_data']} is not JSON: {exc}") from exc
        return data
    if opts["nic"]:
        nics = [dict(_key_value(tuple(n.split(",")), "--nic")) for n in opts["nic"]]
        if opts["seed"] == "nocloud":
            return nocloud_network_config(nics)
        return network_data_from_nics(nics)
    return None


def _drive_spec(settings: Settings, opts: dict[str, Any]) -> tuple[ConfigDriveSpec | None, bool]:
    """The config drive, when one is wanted; it also carries what would otherwise be injected
    (keys, password, files, network template), as Nova does."""
    wanted = opts["config_drive"] or opts["seed"] is not None or settings.force_config_drive
    if not wanted:
        return None, False
    password = opts["admin_pass"] or opts["inject_password"]
    keys = [*opts["ssh_key"], *opts["inject_key"]]
    spec = ConfigDriveSpec(
        user_data=(
            _read_limited(Path(opts["user_data"]), USER_DATA_MAX, "user data")
            if opts["user_data"]
            else None
        ),
        ssh_keys=tuple(_ssh_key(Path(p)) for p in keys),
        admin_pass=password or secrets.token_urlsafe(12),
        files=tuple(_injected_files(opts)),
        meta=tuple(_key_value(opts["meta"], "--meta")),
        hostname=opts["hostname"],
        network_data=_network_data(opts),
        seed="nocloud" if opts["seed"] == "nocloud" else "config-2",
        format=settings.config_drive_format,
    )
    return spec, password is None


def _injection(settings: Settings, opts: dict[str, Any]) -> Injection | None:
    """Without a config drive, keys, password and files go into the root disk itself, when
    the operator turned injection on ([libvirt] inject_partition, inject_key, inject_password)."""
    wanted = (
        opts["inject_key"]
        or opts["inject_password"]
        or opts["inject_file"]
        or opts["inject_network"]
    )
    if not wanted:
        return None
    lib = settings.libvirt
    if lib.inject_partition == INJECTION_DISABLED:
        raise InvalidRequest(
            "file injection is off ([libvirt] inject_partition = -2)",
            reason="injection-off",
            hint="use --config-drive, or set [libvirt] inject_partition (-1 to inspect)",
        )
    if opts["inject_key"] and not lib.inject_key:
        raise InvalidRequest(
            "key injection is off ([libvirt] inject_key = false)",
            reason="injection-off",
            hint="use --config-drive or inject_key",
        )
    if opts["inject_password"] and not lib.inject_password:
        raise InvalidRequest(
            "password injection is off ([libvirt] inject_password = false)",
            reason="injection-off",
            hint="use --config-drive or inject_password",
        )
    return Injection(
        partition=lib.inject_partition,
        keys=tuple(_ssh_key(Path(p))[1] for p in opts["inject_key"]),
        password=opts["inject_password"],
        files=tuple(_injected_files(opts)),
    )


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
@click.option("--backend", type=click.Choice(["qcow2", "flat", "rbd"]))
@click.option("--config-drive", is_flag=True, help="Build disk.config (config-2).")
@click.option("--seed", type=click.Choice(["config-2", "nocloud"]), help="Drive flavour.")
@click.option("--user-data", type=click.Path(dir_okay=False))
@click.option("--ssh-key", type=click.Path(dir_okay=False), multiple=True)
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
@click.option("--kernel", "kernel_source", help="Boot this kernel (path or URL), the AMI way.")
@click.option("--kernel-id", help="Image id of the kernel (default: the normalised source).")
@click.option("--ramdisk", "ramdisk_source", help="Its ramdisk (initrd).")
@click.option("--ramdisk-id", help="Image id of the ramdisk.")
@click.option("--cmdline", help='Kernel command line (default "root=/dev/vda console=ttyS0").')
@click.option("--dry-run", is_flag=True, help="Print the plan; touch nothing.")
@click.pass_context
def create(
    ctx: click.Context,
    /,
    name: str,
    source: str,
    image_id: str | None,
    fmt: str | None,
    checksum: str | None,
    max_size: str | None,
    flavor_name: str | None,
    vcpus: int | None,
    ram_mb: int | None,
    root_gb: int | None,
    ephemeral_gb: int | None,
    swap_mb: int | None,
    ephemerals: tuple[int, ...],
    uuid_text: str | None,
    os_type: str,
    backend: str | None,
    dry_run: bool,
    **drive_opts: Any,
) -> None:
    """Create instance NAME: cache the image, then make its disks and directory."""
    a = app(ctx)
    settings = a.settings
    kernel_source, kernel_id = drive_opts.pop("kernel_source"), drive_opts.pop("kernel_id")
    ramdisk_source, ramdisk_id = drive_opts.pop("ramdisk_source"), drive_opts.pop("ramdisk_id")
    cmdline = drive_opts.pop("cmdline")
    flavor = _flavor(settings, flavor_name, vcpus, ram_mb, root_gb, ephemeral_gb, swap_mb)
    drive, generated = _drive_spec(settings, drive_opts)
    injection = None if drive is not None else _injection(settings, drive_opts)
    spec = InstanceSpec(
        name=validate_name(name),
        uuid=validate_uuid(uuid_text) if uuid_text else str(uuidlib.uuid4()),
        flavor=flavor,
        ephemerals=tuple(ephemerals),
        os_type=OsType(os_type),
        backend=BackendName(backend) if backend else None,
        config_drive=drive,
        cmdline=cmdline,
        injection=injection,
    )
    request = image_request(source, image_id, fmt, checksum, max_size)
    boot_files = _boot_files(kernel_source, kernel_id, ramdisk_source, ramdisk_id)
    if cmdline is not None and not boot_files:
        raise click.UsageError("--cmdline needs --kernel")
    if dry_run:
        image, boot = a.host.resolve(request), a.host.resolve_boot_files(boot_files)
        plan = a.host.plan(spec, image, boot)
        a.output.emit({"dry_run": True, **plan.to_dict()}, lambda out: _print_plan(out, plan))
        return
    inst = a.host.create_instance(spec, request, boot_files)
    data = a.host.describe(inst)
    if generated and drive is not None:
        data["admin_pass"] = drive.admin_pass  # shown once, like Nova's API; never logged
    a.output.emit(data, lambda out: _print_instance(out, data, created=True))


def _boot_files(
    kernel: str | None, kernel_id: str | None, ramdisk: str | None, ramdisk_id: str | None
) -> dict[str, ImageRequest]:
    if (kernel_id and not kernel) or (ramdisk_id and not ramdisk):
        raise click.UsageError("--kernel-id/--ramdisk-id need --kernel/--ramdisk")
    if ramdisk and not kernel:
        raise click.UsageError("--ramdisk needs --kernel")
    files = {}
    if kernel:
        files["kernel"] = image_request(kernel, kernel_id, None, None, None)
    if ramdisk:
        files["ramdisk"] = image_request(ramdisk, ramdisk_id, None, None, None)
    return files


def _print_plan(out: Console, plan: Any) -> None:
    out.print(
        f"[bold]plan for {plan.name}[/] ({plan.uuid}), backend {plan.backend}, nothing was written"
    )
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
    rows = [lifecycle.summary(i) for i in a.host.instances()]

    def human(out: Console) -> None:
        table = Table("name", "uuid", "flavor", "backend", "image", "created")
        for r in rows:
            table.add_row(
                r["name"],
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
@click.pass_context
def delete(ctx: click.Context, ref: str) -> None:
    """Delete an instance directory (never anything in _base)."""
    a = app(ctx)
    inst: Instance = a.host.delete_instance(ref)
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
    """Grow the root (and ephemeral) disk. Shrinking is refused."""
    if root_gb is None and ephemeral_gb is None:
        raise click.UsageError("give --root-gb and/or --ephemeral-gb")
    a = app(ctx)
    data = a.host.describe(a.host.resize_instance(ref, root_gb, ephemeral_gb))
    a.output.emit(data, lambda out: _print_instance(out, data))


@click.command("rescue")
@click.argument("ref", metavar="NAME|UUID")
@click.option("--image", "source", help="Rescue image (default: the instance's own).")
@intake_options("--image-id")
@click.pass_context
def rescue(
    ctx: click.Context,
    ref: str,
    source: str | None,
    image_id: str | None,
    fmt: str | None,
    checksum: str | None,
    max_size: str | None,
) -> None:
    """Create disk.rescue; the instance's disk is left untouched."""
    a = app(ctx)
    request = image_request(source, image_id, fmt, checksum, max_size) if source else None
    data = a.host.describe(a.host.rescue_instance(ref, request))
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
