"""What `vmdisk create` is asked for, and the one function that turns it into an InstanceSpec.

The CLI only parses flags into `CreateOptions`; every rule about what those flags mean —
flavor resolution and overrides, the config drive and its limits, NICs and network data,
guest paths and the operator's inject_* policy — lives here, so a daemon or an orchestrator
calling the Python API gets the same answers (and the same refusals) as the command line.
"""

from __future__ import annotations

import json
import secrets
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vmdisk.configdrive.metadata import network_data_from_nics, nocloud_network_config
from vmdisk.credentials import token_free_id
from vmdisk.errors import InvalidRequest
from vmdisk.imagecache.records import Checksum
from vmdisk.imagecache.store import ImageRequest
from vmdisk.inject import Injection, check_injection_policy, guest_path, require_injection
from vmdisk.model import (
    BackendName,
    ConfigDriveSpec,
    InstanceSpec,
    OsType,
    validate_name,
    validate_uuid,
)
from vmdisk.netdata import check_network_config_v2, check_network_data
from vmdisk.settings import Flavor, Settings
from vmdisk.units import parse_size
from vmdisk.userdata import check_user_data
from vmdisk.userfiles import read_user_file
from vmdisk.validate import (
    bad_character,
    check_cmdline,
    check_hostname,
    check_nic,
    check_text,
    check_unique_macs,
)

USER_DATA_MAX = 65535  # Nova's API limit on user_data
INJECTED_MAX = 10 * 1024 * 1024  # all injected files together
SSH_KEY_MAX = 16384
TEMPLATE_MAX = 1 << 20  # a network template or network_data.json
NIC_KEYS = ("mac", "ip", "gateway", "dns", "mtu")

Seed = Literal["config-2", "nocloud"]


@dataclass(frozen=True, slots=True)
class Nic:
    """One `--nic mac=..,ip=CIDR|dhcp,gateway=..,dns=..,mtu=..`."""

    mac: str
    ip: str = "dhcp"
    gateway: str | None = None
    dns: str | None = None
    mtu: int | None = None

    def __post_init__(self) -> None:
        check_nic(self.fields())  # from the CLI or the Python API alike

    @classmethod
    def parse(cls, text: str) -> Nic:
        """`mac=52:54:00:..,ip=192.0.2.10/24`; unknown keys and a missing mac are refused."""
        return cls.from_pairs(key_values(tuple(text.split(",")), "--nic"))

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> Nic:
        values = dict(pairs)
        if set(values) - set(NIC_KEYS) or "mac" not in values:
            raise InvalidRequest(
                f"--nic needs mac=... and takes ip, gateway, dns, mtu; got {sorted(values)}",
                reason="bad-option",
            )
        mtu = values.get("mtu") or None
        if mtu is not None and not (mtu.isascii() and mtu.isdigit() and len(mtu) < 7):
            raise InvalidRequest(f"--nic mtu {mtu!r} is not a number", reason="bad-option")
        return cls(
            mac=values["mac"],
            ip=values.get("ip", "dhcp"),
            gateway=values.get("gateway") or None,
            dns=values.get("dns") or None,
            mtu=int(mtu) if mtu is not None else None,
        )

    def fields(self) -> dict[str, str]:
        """The key=value form the metadata writers take."""
        values = {"mac": self.mac, "ip": self.ip, "gateway": self.gateway, "dns": self.dns}
        out = {k: v for k, v in values.items() if v is not None}
        if self.mtu is not None:
            out["mtu"] = str(self.mtu)
        return out


@dataclass(frozen=True, slots=True)
class BootFile:
    """A kernel or ramdisk to boot the AMI way: its source, and its image id if given."""

    source: str
    image_id: str | None = None


@dataclass(frozen=True, slots=True)
class CreateOptions:
    """What the `vmdisk create` flags mean, as plain values; files are read by build_spec.

    Either `flavor` names one of settings.flavors, or vcpus, ram_mb and root_gb (with
    optional ephemeral_gb and swap_mb) describe a custom one; never both.
    """

    name: str
    image: str
    image_id: str | None = None
    image_format: str | None = None
    checksum: str | None = None
    max_size: str | int | None = None  # bytes, or text such as "50G"
    uuid: str | None = None  # None: a new random uuid
    flavor: str | None = None
    vcpus: int | None = None
    ram_mb: int | None = None
    root_gb: int | None = None
    ephemeral_gb: int | None = None
    swap_mb: int | None = None
    ephemerals: tuple[int, ...] = ()
    os_type: OsType = OsType.LINUX
    backend: BackendName | None = None
    config_drive: bool = False
    seed: Seed | None = None
    user_data: Path | None = None
    ssh_keys: tuple[Path, ...] = ()
    admin_pass: str | None = None
    meta: tuple[tuple[str, str], ...] = ()
    hostname: str | None = None
    network_data: Path | None = None
    nics: tuple[Nic, ...] = ()
    inject_files: tuple[tuple[str, Path], ...] = ()  # (guest path, host file)
    inject_keys: tuple[Path, ...] = ()
    inject_password: str | None = None
    inject_network: Path | None = None
    kernel: BootFile | None = None
    ramdisk: BootFile | None = None
    cmdline: str | None = None

    @property
    def wants_injection(self) -> bool:
        return bool(
            self.inject_keys or self.inject_password or self.inject_files or self.inject_network
        )


@dataclass(frozen=True, slots=True)
class BuiltRequest:
    """Everything Host.plan and Host.create_instance take, built from one CreateOptions."""

    spec: InstanceSpec
    image: ImageRequest
    boot_files: Mapping[str, ImageRequest] = field(default_factory=dict)
    password_generated: bool = False  # the drive's admin_pass was made up: show it once

    @property
    def generated_password(self) -> str | None:
        drive = self.spec.config_drive
        return drive.admin_pass if self.password_generated and drive is not None else None


def build_spec(settings: Settings, options: CreateOptions) -> BuiltRequest:
    """Resolve the flavor, assemble the config drive or the injection, check the operator's
    policy and the limits; read the files named. Refuses with InvalidRequest (exit 2)."""
    flavor = resolve_flavor(settings, options)
    check_text_options(options)
    drive, generated = _drive_spec(settings, options)
    injection = None if drive is not None else _injection(settings, options)
    check_injection_policy(injection, settings.libvirt)
    spec = InstanceSpec(
        name=validate_name(options.name),
        uuid=validate_uuid(options.uuid) if options.uuid else str(uuidlib.uuid4()),
        flavor=flavor,
        ephemerals=tuple(options.ephemerals),
        os_type=OsType(options.os_type),
        backend=BackendName(options.backend) if options.backend else None,
        config_drive=drive,
        cmdline=options.cmdline,
        injection=injection,
    )
    image = image_request(
        options.image, options.image_id, options.image_format, options.checksum, options.max_size
    )
    boot_files = boot_requests(options.kernel, options.ramdisk)
    if options.cmdline is not None and not boot_files:
        raise InvalidRequest("--cmdline needs --kernel", reason="bad-option")
    return BuiltRequest(spec, image, boot_files, generated)


def check_text_options(o: CreateOptions) -> None:
    """What reaches libvirt.xml or the guest's metadata as text: printable, valid UTF-8."""
    if o.hostname is not None:
        check_hostname(o.hostname)
    if o.cmdline is not None:
        check_cmdline(o.cmdline)
    for key, value in o.meta:
        check_text(key, "--meta key", max_len=255, reason="bad-option")
        check_text(value, f"--meta {key} value", max_len=255, reason="bad-option")
    check_unique_macs([nic.mac for nic in o.nics])
    for flag, password in (
        ("--admin-pass", o.admin_pass),
        ("--inject-password", o.inject_password),
    ):
        # openssl reads the password up to its newline: a control character would cut it short
        if password is not None and (bad_character(password) or not 0 < len(password) <= 255):
            raise InvalidRequest(
                f"{flag} must be 1-255 printable characters (it is not shown here)",
                reason="bad-password",
            )


def resolve_flavor(settings: Settings, options: CreateOptions) -> Flavor:
    """A named flavor, or a custom one from vcpus/ram_mb/root_gb[/ephemeral_gb/swap_mb]."""
    o = options
    custom = [o.vcpus, o.ram_mb, o.root_gb, o.ephemeral_gb, o.swap_mb]
    if o.flavor is not None:
        if any(v is not None for v in custom):
            raise InvalidRequest(
                "--flavor cannot be combined with --vcpus/--ram-mb/--root-gb/"
                "--ephemeral-gb/--swap-mb",
                reason="flavor-conflict",
            )
        if o.flavor not in settings.flavors:
            raise InvalidRequest(
                f"unknown flavor {o.flavor!r}",
                reason="bad-flavor",
                hint="known flavors: " + ", ".join(sorted(settings.flavors)),
            )
        return settings.flavors[o.flavor]
    if o.vcpus is None or o.ram_mb is None or o.root_gb is None:
        raise InvalidRequest(
            "give --flavor NAME, or --vcpus, --ram-mb and --root-gb", reason="no-flavor"
        )
    return Flavor("custom", o.vcpus, o.ram_mb, o.root_gb, o.ephemeral_gb or 0, o.swap_mb or 0)


def size_option(value: str | int | None) -> int | None:
    """A size flag: bytes, or text with a unit ("50G")."""
    if value is None or isinstance(value, int):
        return value
    try:
        return parse_size(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc), reason="bad-size") from exc


def image_request(
    source: str,
    image_id: str | None,
    fmt: str | None,
    checksum: str | None,
    max_size: str | int | None,
) -> ImageRequest:
    """An ImageRequest from the intake flags every image-taking command shares."""
    # Both become the image id (the default id is the normalised source), which lands in
    # libvirt.xml, the records and sha1() for the cache name: printable UTF-8 only.
    check_text(source, "image source", max_len=8192, reason="bad-source")
    if image_id is not None:
        check_text(image_id, "--id", max_len=1024, reason="bad-id")
    else:
        image_id = token_free_id(source)  # None unless the URL's query carries a token
    return ImageRequest(
        source=source,
        image_id=image_id,
        declared_format=fmt,
        checksum=Checksum.parse(checksum) if checksum else None,
        max_size=size_option(max_size),
    )


def boot_file(source: str | None, image_id: str | None) -> BootFile | None:
    """--kernel/--kernel-id (or --ramdisk/--ramdisk-id) as one value; an id alone is refused."""
    if source is None:
        if image_id is not None:
            raise InvalidRequest(
                "--kernel-id/--ramdisk-id need --kernel/--ramdisk", reason="bad-option"
            )
        return None
    return BootFile(source, image_id)


def boot_requests(kernel: BootFile | None, ramdisk: BootFile | None) -> dict[str, ImageRequest]:
    """ "kernel"/"ramdisk" image requests for create and rescue; a ramdisk needs a kernel."""
    if ramdisk is not None and kernel is None:
        raise InvalidRequest("--ramdisk needs --kernel", reason="bad-option")
    files = {}
    for role, boot in (("kernel", kernel), ("ramdisk", ramdisk)):
        if boot is not None:
            files[role] = image_request(boot.source, boot.image_id, None, None, None)
    return files


def key_values(items: Iterable[str], what: str) -> tuple[tuple[str, str], ...]:
    """`KEY=VALUE` flags (--meta, --inject-file, the parts of --nic) as pairs."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"{what} {item!r} must be KEY=VALUE", reason="bad-option")
        pairs.append((key, value))
    return tuple(pairs)


def read_limited(path: Path, limit: int, what: str) -> bytes:
    """A user's file: regular, at most `limit` bytes, size checked before it is read."""
    return read_user_file(path, limit, what)


def ssh_key(path: Path) -> tuple[str, str]:
    """(name, key) from an OpenSSH public key file; the name is its comment or the file stem."""
    try:
        text = read_limited(path, SSH_KEY_MAX, "ssh key").decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidRequest(
            f"{path} is not an OpenSSH public key (not UTF-8)", reason="bad-key"
        ) from None
    fields = text.split()
    if (
        len(fields) < 2
        or not fields[0].startswith(("ssh-", "ecdsa-", "sk-"))
        or len(text.splitlines()) != 1
        or bad_character(text) is not None
    ):
        raise InvalidRequest(f"{path} is not an OpenSSH public key", reason="bad-key") from None
    name = fields[2] if len(fields) > 2 else path.stem
    return name, text


def injected_files(options: CreateOptions) -> tuple[tuple[str, bytes], ...]:
    """--inject-file and --inject-network contents, 10 MiB together at most."""
    files = []
    total = 0
    for guest, host in options.inject_files:
        content = read_limited(host, INJECTED_MAX, "injected file")
        total += len(content)
        files.append((guest_path(guest), content))
    if options.inject_network is not None:
        network = read_limited(options.inject_network, TEMPLATE_MAX, "network template")
        files.append(("/etc/network/interfaces", network))
        total += len(network)
    if total > INJECTED_MAX:
        raise InvalidRequest(
            f"injected files total {total} bytes; the limit is {INJECTED_MAX}", reason="too-large"
        )
    return tuple(files)


def network_data(options: CreateOptions) -> dict[str, Any] | None:
    """--network-data as given (JSON), or the NICs as network_data.json / network-config v2."""
    if options.network_data is not None:
        try:
            data = json.loads(read_limited(options.network_data, TEMPLATE_MAX, "network data"))
        except ValueError as exc:
            raise InvalidRequest(
                f"{options.network_data} is not JSON: {exc}", reason="bad-network-data"
            ) from exc
        if options.seed == "nocloud":
            return check_network_config_v2(data)
        return check_network_data(data)
    if options.nics:
        nics = [nic.fields() for nic in options.nics]
        if options.seed == "nocloud":
            return nocloud_network_config(nics)
        return network_data_from_nics(nics)
    return None


def _drive_spec(settings: Settings, o: CreateOptions) -> tuple[ConfigDriveSpec | None, bool]:
    """The config drive, when one is wanted; it also carries what would otherwise be injected
    (keys, password, files, network template), as Nova does."""
    wanted = o.config_drive or o.seed is not None or settings.force_config_drive
    if not (wanted or drive_only(o)):
        return None, False
    password = o.admin_pass or o.inject_password
    user_data = read_limited(o.user_data, USER_DATA_MAX, "user data") if o.user_data else None
    spec = ConfigDriveSpec(
        user_data=check_user_data(user_data, str(o.user_data)) if user_data else user_data,
        ssh_keys=tuple(ssh_key(p) for p in (*o.ssh_keys, *o.inject_keys)),
        admin_pass=password or secrets.token_urlsafe(12),
        files=injected_files(o),
        meta=tuple(o.meta),
        hostname=o.hostname,
        network_data=network_data(o),
        seed="nocloud" if o.seed == "nocloud" else "config-2",
        format=settings.config_drive_format,
    )
    return spec, password is None


def drive_only(o: CreateOptions) -> bool:
    """Data only a drive can carry. Given without --config-drive it implies one (config-2, or
    NoCloud with --seed), rather than being dropped: Nova would serve it from its metadata
    service, which a single host does not have."""
    return bool(
        o.user_data
        or o.ssh_keys
        or o.admin_pass
        or o.meta
        or o.hostname
        or o.network_data
        or o.nics
    )


def _injection(settings: Settings, o: CreateOptions) -> Injection | None:
    """Without a config drive, keys, password and files go into the root disk itself, when
    the operator turned injection on ([libvirt] inject_partition, inject_key, inject_password).
    The policy is checked before any file is read."""
    if not o.wants_injection:
        return None
    lib = settings.libvirt
    require_injection(lib, keys=bool(o.inject_keys), password=bool(o.inject_password))
    return Injection(
        partition=lib.inject_partition,
        keys=tuple(ssh_key(p)[1] for p in o.inject_keys),
        password=o.inject_password,
        files=injected_files(o),
    )
