"""Settings: a TOML file, then VMDISK_* environment variables, then flags, merged once.

Option names and defaults are Nova's, so an operator's knowledge carries over. The result is a
tree of frozen dataclasses; each part of the library receives only the slice it uses. Every
value is parsed into its domain type here, once (enums, the network interface, a checked machine
type), so a bad value is a SettingsError naming file and key, never a failure deep in a command.
Values given as strings from Python (`Settings(images_type="raw")`, `dataclasses.replace`) get
the same parse.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import platformdirs

from vmdisk.errors import SettingsError
from vmdisk.imagecache.mirrors import parse_mirrors
from vmdisk.netspec import Interface, parse_network
from vmdisk.qemuvalues import ceph_name, option_path, secret_uuid
from vmdisk.units import GiB, parse_size
from vmdisk.validate import bad_character

SYSTEM_CONFIG = Path("/etc/vmdisk/vmdisk.toml")
ENV_PREFIX = "VMDISK_"
ENV_CONFIG = "VMDISK_CONFIG"
#: qemu's `-machine` and libvirt's `<type machine=>`: a comma would add qemu sub-options.
MACHINE_TYPE = re.compile(r"[A-Za-z0-9._-]{1,64}")

_E = TypeVar("_E", bound=StrEnum)


class ImagesType(StrEnum):
    """`[libvirt] images_type`; "default" is qcow2 with use_cow_images, else flat."""

    DEFAULT = "default"
    QCOW2 = "qcow2"
    FLAT = "flat"
    RAW = "raw"  # Nova's older name for flat
    RBD = "rbd"
    LVM = "lvm"


class VolumeClear(StrEnum):
    """`[libvirt] volume_clear`: what is done to an LV's blocks before it is removed."""

    ZERO = "zero"
    SHRED = "shred"
    NONE = "none"


class PreallocateImages(StrEnum):
    NONE = "none"
    SPACE = "space"


class ConfigDriveFormat(StrEnum):
    ISO9660 = "iso9660"
    VFAT = "vfat"


def _kind(kind: str | Callable[[Any], Any], default: Any, *, choices: tuple[str, ...] = ()) -> Any:
    """A dataclass field whose metadata says how to read it from TOML or the environment.

    `kind` names a converter below, or is a parser into a domain type; a parser's field is
    parsed again when Python code hands it a plain string (see _parse_strings).
    """
    return field(default=default, metadata={"kind": kind, "choices": choices})


def _as_enum(cls: type[_E]) -> Callable[[Any], _E]:
    def convert(value: Any) -> _E:
        text = _as_str(value)
        if text not in tuple(cls):
            raise ValueError(f"{text!r} is not one of {', '.join(cls)}")
        return cls(text)

    return convert


def _as_network(value: Any) -> Interface | None:
    return parse_network(_as_str(value))


def _as_machine(value: Any) -> str:
    text = _as_str(value)
    if not MACHINE_TYPE.fullmatch(text):
        raise ValueError(f"{text!r} is not a qemu machine type (letters, digits, '.', '_', '-')")
    return text


# These end inside qemu's `rbd:pool/image:conf=..:id=..` (see qemuvalues.py).
def _as_ceph_pool(value: Any) -> str:
    return ceph_name(_as_str(value), "pool")


def _as_ceph_user(value: Any) -> str | None:
    return ceph_name(_as_str(value), "rbd user") if value != "" else None


def _as_ceph_conf(value: Any) -> str:
    return option_path(_as_str(value), "ceph.conf path")


def _as_secret_uuid(value: Any) -> str | None:
    return secret_uuid(_as_str(value)) if value != "" else None


def _parse_strings(obj: Any, section: str) -> None:
    """Run a domain field's parser on a plain string given from Python, as load_settings does."""
    for f in dataclasses.fields(obj):
        parse = f.metadata.get("kind")
        value = getattr(obj, f.name)
        if callable(parse) and type(value) is str:
            try:
                object.__setattr__(obj, f.name, parse(value))
            except ValueError as exc:
                raise SettingsError(f"settings: {section}{f.name}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Flavor:
    name: str
    vcpus: int
    memory_mb: int
    root_gb: int
    ephemeral_gb: int = 0
    swap_mb: int = 0


BUILTIN_FLAVORS: Mapping[str, Flavor] = {
    f.name: f
    for f in (
        Flavor("m1.tiny", 1, 512, 1),
        Flavor("m1.small", 1, 2048, 20),
        Flavor("m1.medium", 2, 4096, 40),
        Flavor("m1.large", 4, 8192, 80),
        Flavor("m1.xlarge", 8, 16384, 160),
    )
}


@dataclass(frozen=True, slots=True)
class ImageCacheSettings:
    subdirectory_name: str = _kind("name", "_base")
    remove_unused_base_images: bool = _kind("bool", True)
    remove_unused_original_minimum_age_seconds: int = _kind("int", 86400)
    remove_unused_resized_minimum_age_seconds: int = _kind("int", 3600)
    remove_unused_template_minimum_age_seconds: int = _kind("int", 86400)
    remove_temporary_minimum_age_seconds: int = _kind("int", 3600)
    max_size: int | None = _kind("size?", None)
    max_virtual_size: int = _kind("size", 4096 * GiB)
    manager_interval: int = _kind("int", 2400)
    download_connect_timeout: int = _kind("int", 10)
    download_stall_timeout: int = _kind("int", 30)
    # http: the status line and headers must be complete within this (a drip cannot hold us)
    download_header_timeout: int = _kind("int", 60)
    # http: honour HTTP(S)_PROXY, NO_PROXY and .netrc from the environment (off: not implied)
    download_trust_env: bool = _kind("bool", False)
    # A body slower than download_min_rate over any download_rate_window seconds, or longer
    # than download_deadline in all, is abandoned (a drip feed must not hold the entry lock).
    download_min_rate: int = _kind("size", 16 * 1024)
    download_rate_window: int = _kind("int", 60)
    download_deadline: int = _kind("int", 6 * 3600)
    simplestreams_keyring: str = _kind("str", "")  # gpg keyring that signs ss: streams
    mirrors: tuple[tuple[str, str], ...] = _kind(parse_mirrors, ())  # ["PREFIX=MIRROR", ...]


@dataclass(frozen=True, slots=True)
class LibvirtSettings:
    images_type: ImagesType = _kind(_as_enum(ImagesType), ImagesType.DEFAULT)
    images_cpu_time_limit: int = _kind("int", 30)
    images_address_space_limit: int = _kind("gib", 2 * GiB)
    virt_type: str = _kind("str", "auto", choices=("auto", "kvm", "qemu"))
    machine_type: str = _kind(_as_machine, "pc")
    network: Interface | None = _kind(_as_network, None)  # "none" is no NIC
    images_rbd_pool: str = _kind(_as_ceph_pool, "vms")
    images_rbd_ceph_conf: str = _kind(_as_ceph_conf, "")
    rbd_user: str | None = _kind(_as_ceph_user, None)
    rbd_secret_uuid: str | None = _kind(_as_secret_uuid, None)
    images_rbd_glance_store_name: str = _kind("str", "")
    images_volume_group: str = _kind("str", "")
    images_thin_pool: str = _kind("str", "")
    sparse_logical_volumes: bool = _kind("bool", False)
    volume_clear: VolumeClear = _kind(_as_enum(VolumeClear), VolumeClear.ZERO)
    volume_clear_size: int = _kind("int", 0)
    inject_partition: int = _kind("int", -2)
    inject_key: bool = _kind("bool", False)
    inject_password: bool = _kind("bool", False)
    # vmdisk's own (issue 21): overlays with 4 KiB subclusters; qemu < 5.2 cannot open them.
    qcow2_extended_l2: bool = _kind("bool", True)

    def __post_init__(self) -> None:
        _parse_strings(self, "[libvirt] ")


@dataclass(frozen=True, slots=True)
class GlanceSettings:
    api_url: str = _kind("str", "")
    token: str | None = _kind("str?", None)
    project: str | None = _kind("str?", None)
    cafile: str | None = _kind("str?", None)  # CA bundle for an https api_url (Nova's name)


@dataclass(frozen=True, slots=True)
class OciSettings:
    """OCI registries: plain-http loopback registries, credentials, the platform to pull."""

    insecure_registries: tuple[str, ...] = _kind("strlist", ())
    credentials: tuple[str, ...] = _kind("strlist", ())  # "REGISTRY=USER:PASSWORD"
    auth_file: str = _kind("str", "")  # default $DOCKER_CONFIG/config.json, ~/.docker/config.json
    platform: str = _kind("str", "")  # default the host's, e.g. linux/amd64
    cafile: str | None = _kind("str?", None)  # CA bundle for registries with a private CA


@dataclass(frozen=True, slots=True)
class Settings:
    instances_path: Path = _kind("path", Path("/var/lib/vmdisk/instances"))
    use_cow_images: bool = _kind("bool", True)
    force_raw_images: bool = _kind("bool", True)
    preallocate_images: PreallocateImages = _kind(
        _as_enum(PreallocateImages), PreallocateImages.NONE
    )
    default_ephemeral_format: str | None = _kind(
        "str?", None, choices=("ext2", "ext3", "ext4", "xfs", "vfat", "ntfs")
    )
    virt_mkfs: tuple[str, ...] = _kind("strlist", ())
    force_config_drive: bool = _kind("bool", False)
    config_drive_format: ConfigDriveFormat = _kind(
        _as_enum(ConfigDriveFormat), ConfigDriveFormat.ISO9660
    )
    image_cache: ImageCacheSettings = field(default_factory=ImageCacheSettings)
    libvirt: LibvirtSettings = field(default_factory=LibvirtSettings)
    glance: GlanceSettings = field(default_factory=GlanceSettings)
    oci: OciSettings = field(default_factory=OciSettings)
    flavors: Mapping[str, Flavor] = field(default_factory=lambda: dict(BUILTIN_FLAVORS))
    config_file: Path | None = None

    def __post_init__(self) -> None:
        _parse_strings(self, "")

    @property
    def base_dir(self) -> Path:
        return self.instances_path / self.image_cache.subdirectory_name

    @property
    def locks_dir(self) -> Path:
        return self.instances_path / "locks"

    def mkfs_commands(self) -> dict[str, str]:
        """`virt_mkfs` entries as {os_type: command}, Nova's `<os_type>=<command>` form."""
        return dict(entry.split("=", 1) for entry in self.virt_mkfs)


_SECTIONS: dict[str, type[Any]] = {
    "image_cache": ImageCacheSettings,
    "libvirt": LibvirtSettings,
    "glance": GlanceSettings,
    "oci": OciSettings,
}


def default_instances_path() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/vmdisk/instances")
    return Path(platformdirs.user_data_dir("vmdisk")) / "instances"


def find_config_file(explicit: Path | None, env: Mapping[str, str]) -> Path | None:
    """--config, else $VMDISK_CONFIG, else /etc/vmdisk/vmdisk.toml, else the user config dir."""
    for candidate in (explicit, env.get(ENV_CONFIG)):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise SettingsError(f"{path}: configuration file not found")
            return path
    user_file = Path(platformdirs.user_config_dir("vmdisk")) / "vmdisk.toml"
    for path in (SYSTEM_CONFIG, user_file):
        if path.is_file():
            return path
    return None


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge file < environment < flags into one frozen Settings. Raises SettingsError."""
    env = os.environ if env is None else env
    path = find_config_file(config_file, env)
    raw: dict[str, Any] = _read_toml(path) if path else {}
    where = str(path) if path else "settings"
    _merge_env(raw, env)
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    raw.setdefault("instances_path", str(default_instances_path()))
    flavors = dict(BUILTIN_FLAVORS)
    flavors.update(_read_flavors(raw.pop("flavors", {}), where))
    sections = {
        name: _build(cls, raw.pop(name, {}), where, f"[{name}] ") for name, cls in _SECTIONS.items()
    }
    top = _build(
        Settings,
        raw,
        where,
        "",
        skip=("image_cache", "libvirt", "glance", "oci", "flavors", "config_file"),
    )
    settings: Settings = dataclasses.replace(top, flavors=flavors, config_file=path, **sections)
    _validate(settings, where)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror}") from exc


def _merge_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """VMDISK_KEY sets a top-level option, VMDISK_SECTION__KEY one inside a section."""
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if "__" in key:
            section, sub = key.split("__", 1)
            if section not in _SECTIONS:
                raise SettingsError(
                    f"environment {name}: unknown section {section!r}"
                    + _suggest(section, list(_SECTIONS))
                )
            raw.setdefault(section, {})[sub] = value
        else:
            raw[key] = value


def _read_flavors(table: Any, where: str) -> dict[str, Flavor]:
    if not isinstance(table, dict):
        raise SettingsError(f"{where}: [flavors] must be a table of tables")
    flavors = {}
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise SettingsError(f"{where}: [flavors.{name}] must be a table")
        if not name or len(name) > 255 or bad_character(name):  # it is written into libvirt.xml
            raise SettingsError(f"{where}: flavor name {name!r} must be 1-255 printable characters")
        known = {f.name for f in dataclasses.fields(Flavor)} - {"name"}
        for key in spec:
            if key not in known:
                raise SettingsError(
                    f"{where}: [flavors.{name}] {key}: unknown key" + _suggest(key, sorted(known))
                )
        try:
            values = {k: _as_int(v) for k, v in spec.items()}
            flavors[name] = Flavor(name=name, **values)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{where}: [flavors.{name}]: {exc}") from exc
    return flavors


def _build(cls: type[Any], table: Any, where: str, prefix: str, skip: tuple[str, ...] = ()) -> Any:
    if not isinstance(table, dict):
        raise SettingsError(f"{where}: {prefix.strip() or 'settings'} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    values = {}
    for key, value in table.items():
        if key not in fields:
            choices = [*fields, *(([*_SECTIONS, "flavors"]) if not prefix else [])]
            raise SettingsError(f"{where}: {prefix}{key}: unknown key" + _suggest(key, choices))
        meta = fields[key].metadata
        try:
            values[key] = _convert(meta["kind"], value, meta["choices"])
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{where}: {prefix}{key}: {exc}") from exc
    return cls(**values)


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"expected a whole number, got {value!r}")


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    truthy, falsy = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
    if isinstance(value, str) and value.lower() in truthy | falsy:
        return value.lower() in truthy
    raise ValueError(f"expected true or false, got {value!r}")


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _as_name(value: Any) -> str:
    text = _as_str(value)
    if not text or "/" in text or text in {".", ".."} or text.startswith("-"):
        raise ValueError(f"{text!r} must be a plain directory name")
    return text


def _as_gib(value: Any) -> int:
    # Nova gives images_address_space_limit in GiB as a bare integer; accept "2G" too.
    if isinstance(value, int) and not isinstance(value, bool):
        return value * GiB
    return parse_size(_as_str(value))


def _as_strlist(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v for v in value.split(",") if v)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"expected a list of strings, got {value!r}")


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "bool": _as_bool,
    "int": _as_int,
    "str": _as_str,
    "name": _as_name,
    "path": lambda v: Path(_as_str(v)).expanduser(),
    "size": lambda v: parse_size(v if isinstance(v, int) else _as_str(v)),
    "gib": _as_gib,
    "strlist": _as_strlist,
}


def _convert(kind: str | Callable[[Any], Any], value: Any, choices: tuple[str, ...]) -> Any:
    if callable(kind):
        return kind(value)
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if optional and (value is None or value == ""):
        return None
    result = _CONVERTERS[kind](value)
    if choices and result not in choices:
        raise ValueError(f"{result!r} is not one of {', '.join(choices)}")
    return result


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _validate(settings: Settings, where: str) -> None:
    if not settings.instances_path.is_absolute():
        raise SettingsError(f"{where}: instances_path must be absolute: {settings.instances_path}")
    problem = bad_character(str(settings.instances_path))  # every path in libvirt.xml has it
    if problem is not None:
        raise SettingsError(f"{where}: instances_path has {problem}")
    for entry in settings.virt_mkfs:
        if "=" not in entry:
            raise SettingsError(f"{where}: virt_mkfs entry {entry!r} is not '<os_type>=<command>'")
    lib = settings.libvirt
    if lib.images_cpu_time_limit <= 0 or lib.images_address_space_limit <= 0:
        raise SettingsError(f"{where}: [libvirt] qemu-img limits must be positive")
    if lib.images_type is ImagesType.LVM and not lib.images_volume_group:
        raise SettingsError(f"{where}: images_type = 'lvm' needs [libvirt] images_volume_group")
    if lib.volume_clear_size < 0:
        raise SettingsError(f"{where}: [libvirt] volume_clear_size must be 0 (all) or more")
    if lib.images_type is ImagesType.RBD and not settings.force_raw_images:
        raise SettingsError(f"{where}: images_type = 'rbd' needs force_raw_images = true")
    _validate_download(settings.image_cache, where)


def _validate_download(c: ImageCacheSettings, where: str) -> None:
    """The download watchdog's settings (issue 16): a zero window or deadline would refuse all."""
    if c.download_rate_window <= 0 or c.download_deadline <= 0 or c.download_min_rate < 0:
        raise SettingsError(
            f"{where}: [image_cache] download_rate_window and download_deadline must be "
            "positive, download_min_rate 0 (off) or more"
        )
