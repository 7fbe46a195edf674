from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vmdisk.errors import SettingsError
from vmdisk.netspec import Interface, InterfaceKind
from vmdisk.settings import (
    BUILTIN_FLAVORS,
    ConfigDriveFormat,
    ImagesType,
    LibvirtSettings,
    PreallocateImages,
    Settings,
    load_settings,
)
from vmdisk.units import GiB


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vmdisk.toml"
    path.write_text(text)
    return path


def test_defaults_are_novas(tmp_path: Path) -> None:
    s = load_settings(None, env={}, overrides={"instances_path": str(tmp_path)})
    assert s.use_cow_images is True
    assert s.force_raw_images is True
    assert s.preallocate_images == "none"
    assert s.config_drive_format == "iso9660"
    assert s.image_cache.subdirectory_name == "_base"
    assert s.image_cache.remove_unused_original_minimum_age_seconds == 86400
    assert s.image_cache.remove_unused_resized_minimum_age_seconds == 3600
    assert s.libvirt.images_type == "default"
    assert s.libvirt.images_cpu_time_limit == 30
    assert s.libvirt.images_address_space_limit == 2 * GiB
    assert s.base_dir == tmp_path / "_base"
    assert s.flavors["m1.small"] == BUILTIN_FLAVORS["m1.small"]


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        'instances_path = "/from/file"\nuse_cow_images = false\n'
        "[libvirt]\nimages_cpu_time_limit = 10\n",
    )
    s = load_settings(cfg, env={}, overrides={})
    assert s.instances_path == Path("/from/file") and s.use_cow_images is False
    env = {"VMDISK_INSTANCES_PATH": "/from/env", "VMDISK_LIBVIRT__IMAGES_CPU_TIME_LIMIT": "20"}
    s = load_settings(cfg, env=env, overrides={})
    assert s.instances_path == Path("/from/env")
    assert s.libvirt.images_cpu_time_limit == 20
    s = load_settings(cfg, env=env, overrides={"instances_path": "/from/flag"})
    assert s.instances_path == Path("/from/flag")


def test_config_from_environment_variable(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'instances_path = "/via/env/config"\n')
    s = load_settings(None, env={"VMDISK_CONFIG": str(cfg)}, overrides={})
    assert s.instances_path == Path("/via/env/config")
    assert s.config_file == cfg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('instance_path = "/x"\n', "did you mean 'instances_path'"),
        ('[libvirt]\nimages_typ = "qcow2"\n', "did you mean 'images_type'"),
        ('[libvirt]\nimages_type = "ploop"\n', "is not one of"),
        ("use_cow_images = 3\n", "expected true or false"),
        ('[image_cache]\nmax_size = "10X"\n', "not a size"),
        ("[flavors.big]\nvcpus = 2\nmemory_mb = 1\nroot_gb = 1\ndisk = 3\n", "unknown key"),
        ("instances_path = [", "not valid TOML"),
        ('instances_path = "relative/dir"\n', "must be absolute"),
        ('[libvirt]\nimages_type = "rbd"\n[image_cache]\n', None),
    ],
)
def test_refusals_name_file_and_key(tmp_path: Path, text: str, expected: str | None) -> None:
    cfg = write(tmp_path, text)
    if expected is None:
        load_settings(cfg, env={}, overrides={})
        return
    with pytest.raises(SettingsError) as err:
        load_settings(cfg, env={}, overrides={})
    assert str(cfg) in err.value.message
    assert expected in err.value.message
    assert err.value.exit_code == 3


def test_unknown_environment_section_is_refused() -> None:
    with pytest.raises(SettingsError, match="unknown section"):
        load_settings(None, env={"VMDISK_LIBVRT__IMAGES_TYPE": "qcow2"}, overrides={})


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={}, overrides={})


def test_user_flavors_and_sizes(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "[flavors.tiny2]\nvcpus = 1\nmemory_mb = 256\nroot_gb = 2\nswap_mb = 64\n"
        '[image_cache]\nmax_size = "50G"\n[libvirt]\n'
        "images_address_space_limit = 4\n",
    )
    s = load_settings(cfg, env={}, overrides={})
    assert s.flavors["tiny2"].swap_mb == 64
    assert "m1.tiny" in s.flavors
    assert s.image_cache.max_size == 50 * GiB
    assert s.libvirt.images_address_space_limit == 4 * GiB


def test_values_are_parsed_into_domain_types(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        'preallocate_images = "space"\nconfig_drive_format = "vfat"\n'
        '[libvirt]\nimages_type = "raw"\nnetwork = "bridge:br0"\nmachine_type = "pc-q35-8.2"\n',
    )
    s = load_settings(cfg, env={}, overrides={})
    assert s.preallocate_images is PreallocateImages.SPACE
    assert s.config_drive_format is ConfigDriveFormat.VFAT
    assert s.libvirt.images_type is ImagesType.RAW
    assert s.libvirt.network == Interface(InterfaceKind.BRIDGE, "br0")
    assert s.libvirt.machine_type == "pc-q35-8.2"
    defaults = load_settings(None, env={}, overrides={"instances_path": str(tmp_path)})
    assert defaults.libvirt.network is None
    assert defaults.libvirt.images_type is ImagesType.DEFAULT


def test_environment_values_get_the_same_parse(tmp_path: Path) -> None:
    env = {"VMDISK_LIBVIRT__NETWORK": "user", "VMDISK_CONFIG_DRIVE_FORMAT": "vfat"}
    s = load_settings(None, env=env, overrides={"instances_path": str(tmp_path)})
    assert s.libvirt.network == Interface(InterfaceKind.USER)
    assert s.config_drive_format is ConfigDriveFormat.VFAT
    with pytest.raises(SettingsError, match=r"\[libvirt\] network: .*bogus"):
        load_settings(None, env={"VMDISK_LIBVIRT__NETWORK": "bogus"}, overrides={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[libvirt]\nnetwork = "bogus"\n', "[libvirt] network: network 'bogus' must be"),
        ('[libvirt]\nnetwork = "bridge:br0,helper=/x"\n', "[libvirt] network: bridge name"),
        ('[libvirt]\nnetwork = "bridge:"\n', "[libvirt] network: bridge name"),
        ("[libvirt]\nnetwork = 1\n", "[libvirt] network: expected a string"),
        ('[libvirt]\nmachine_type = "pc,accel=tcg"\n', "[libvirt] machine_type: "),
        ('[libvirt]\nmachine_type = ""\n', "[libvirt] machine_type: "),
        ('preallocate_images = "full"\n', "preallocate_images: 'full' is not one of none, space"),
        ('config_drive_format = "iso"\n', "config_drive_format: 'iso' is not one of iso9660"),
    ],
)
def test_bad_domain_values_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    cfg = write(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        load_settings(cfg, env={}, overrides={})
    assert err.value.message.startswith(f"{cfg}: ")
    assert expected in err.value.message
    assert err.value.exit_code == 3


def test_strings_from_python_get_the_same_parse() -> None:
    s = dataclasses.replace(Settings(), preallocate_images="space")  # type: ignore[arg-type]
    assert s.preallocate_images is PreallocateImages.SPACE
    lib = LibvirtSettings(images_type="rbd", network="bridge:br1")  # type: ignore[arg-type]
    assert lib.images_type is ImagesType.RBD
    assert lib.network == Interface(InterfaceKind.BRIDGE, "br1")
    with pytest.raises(SettingsError, match=r"settings: \[libvirt\] network: "):
        LibvirtSettings(network="bridge:a,b")  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="settings: config_drive_format: "):
        Settings(config_drive_format="udf")  # type: ignore[arg-type]
