"""build_spec: what the create flags mean, and the operator's injection policy, as plain values."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.fakes import FakeRunner
from vmdisk.errors import InvalidRequest
from vmdisk.host import Host
from vmdisk.imagecache.records import Checksum
from vmdisk.imagecache.store import ImageRequest
from vmdisk.inject import Injection, check_injection_policy, guest_path
from vmdisk.model import BackendName, InstanceSpec, OsType
from vmdisk.request import (
    INJECTED_MAX,
    USER_DATA_MAX,
    BootFile,
    CreateOptions,
    Nic,
    boot_file,
    build_spec,
    key_values,
)
from vmdisk.settings import Flavor, Settings

UUID = "0d5e6b61-602d-4589-84b3-bf038267614d"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBvmdiskUnitKeyMaterialxxxxxxxxxxxxxxxxxxxxxx bob@desk"


def options(**kw: object) -> CreateOptions:
    base = CreateOptions(name="vm", image="/images/root.raw", uuid=UUID, flavor="m1.tiny")
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def injecting(settings: Settings, partition: int = -1, **switches: bool) -> Settings:
    lib = dataclasses.replace(settings.libvirt, inject_partition=partition, **switches)
    return dataclasses.replace(settings, libvirt=lib)


def refused(settings: Settings, opts: CreateOptions) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        build_spec(settings, opts)
    return err.value


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519.pub"
    path.write_text(KEY + "\n")
    return path


# --- flavors ---------------------------------------------------------------------------


def test_named_flavor_and_the_rest_of_the_spec(settings: Settings) -> None:
    built = build_spec(
        settings,
        options(ephemerals=(2, 3), os_type=OsType.WINDOWS, backend=BackendName.FLAT),
    )
    assert built.spec.flavor == settings.flavors["m1.tiny"]
    assert (built.spec.name, built.spec.uuid) == ("vm", UUID)
    assert built.spec.ephemerals == (2, 3) and built.spec.os_type is OsType.WINDOWS
    assert built.spec.backend is BackendName.FLAT
    assert built.spec.config_drive is None and built.spec.injection is None
    assert built.image == ImageRequest("/images/root.raw")
    assert built.boot_files == {} and built.generated_password is None


def test_custom_flavor_defaults_ephemeral_and_swap(settings: Settings) -> None:
    built = build_spec(settings, options(flavor=None, vcpus=2, ram_mb=256, root_gb=0))
    assert built.spec.flavor == Flavor("custom", 2, 256, 0, 0, 0)
    built = build_spec(
        settings, options(flavor=None, vcpus=1, ram_mb=64, root_gb=1, ephemeral_gb=2, swap_mb=8)
    )
    assert built.spec.flavor == Flavor("custom", 1, 64, 1, 2, 8)


@pytest.mark.parametrize("override", ["vcpus", "ram_mb", "root_gb", "ephemeral_gb", "swap_mb"])
def test_flavor_cannot_be_combined_with_overrides(settings: Settings, override: str) -> None:
    error = refused(settings, options(**{override: 1}))
    assert error.reason == "flavor-conflict" and error.exit_code == 2
    assert error.message == (
        "--flavor cannot be combined with --vcpus/--ram-mb/--root-gb/--ephemeral-gb/--swap-mb"
    )


def test_no_flavor_and_incomplete_custom_flavor(settings: Settings) -> None:
    for partial in ({}, {"vcpus": 1}, {"vcpus": 1, "ram_mb": 64}, {"ram_mb": 64, "root_gb": 1}):
        error = refused(settings, options(flavor=None, **partial))
        assert error.reason == "no-flavor" and error.exit_code == 2
        assert error.message == "give --flavor NAME, or --vcpus, --ram-mb and --root-gb"


def test_unknown_flavor_names_the_known_ones(settings: Settings) -> None:
    error = refused(settings, options(flavor="m9.huge"))
    assert error.reason == "bad-flavor" and "m1.tiny" in str(error.hint)


def test_names_uuids_and_image_flags(settings: Settings) -> None:
    assert refused(settings, options(name="../x")).reason == "bad-name"
    assert refused(settings, options(uuid="not-a-uuid")).reason == "bad-uuid"
    assert refused(settings, options(image_id="")).reason == "bad-id"
    assert refused(settings, options(max_size="lots")).reason == "bad-size"
    fresh = build_spec(settings, options(uuid=None)).spec.uuid
    assert fresh != UUID and len(fresh) == 36
    built = build_spec(
        settings,
        options(
            image_id="noble", image_format="qcow2", checksum="sha256:" + "a" * 64, max_size="2G"
        ),
    )
    assert built.image == ImageRequest(
        "/images/root.raw",
        image_id="noble",
        declared_format="qcow2",
        checksum=Checksum.parse("sha256:" + "a" * 64),
        max_size=2 * 1024**3,
    )


# --- kernel, ramdisk, cmdline -----------------------------------------------------------


def test_boot_files_and_their_rules(settings: Settings) -> None:
    built = build_spec(
        settings,
        options(kernel=BootFile("/k", "kid"), ramdisk=BootFile("/r"), cmdline="root=/dev/vda"),
    )
    assert built.boot_files == {
        "kernel": ImageRequest("/k", image_id="kid"),
        "ramdisk": ImageRequest("/r"),
    }
    assert built.spec.cmdline == "root=/dev/vda"
    assert refused(settings, options(ramdisk=BootFile("/r"))).message == "--ramdisk needs --kernel"
    assert refused(settings, options(cmdline="x")).message == "--cmdline needs --kernel"
    with pytest.raises(InvalidRequest, match="--kernel-id/--ramdisk-id need"):
        boot_file(None, "kid")
    assert boot_file(None, None) is None and boot_file("/k", None) == BootFile("/k")


# --- config drive -----------------------------------------------------------------------


def test_config_drive_assembly(settings: Settings, tmp_path: Path, key_file: Path) -> None:
    user_data = tmp_path / "ud"
    user_data.write_bytes(b"#cloud-config\n")
    motd = tmp_path / "motd"
    motd.write_bytes(b"hello\n")
    built = build_spec(
        settings,
        options(
            config_drive=True,
            user_data=user_data,
            ssh_keys=(key_file,),
            meta=(("role", "web"),),
            hostname="h1",
            inject_files=(("/etc/motd", motd),),
            admin_pass="pw",
        ),
    )
    drive = built.spec.config_drive
    assert drive is not None and built.spec.injection is None
    assert drive.user_data == b"#cloud-config\n" and drive.ssh_keys == (("bob@desk", KEY),)
    assert drive.files == (("/etc/motd", b"hello\n"),) and drive.meta == (("role", "web"),)
    assert (drive.hostname, drive.admin_pass, drive.seed) == ("h1", "pw", "config-2")
    assert drive.format == settings.config_drive_format
    assert built.generated_password is None


def test_generated_password_is_reported_once(settings: Settings) -> None:
    built = build_spec(settings, options(config_drive=True))
    assert built.password_generated and built.spec.config_drive is not None
    assert built.generated_password == built.spec.config_drive.admin_pass
    assert len(built.generated_password or "") >= 12
    inject_pw = build_spec(settings, options(config_drive=True, inject_password="root-pw"))
    assert inject_pw.generated_password is None
    assert inject_pw.spec.config_drive is not None
    assert inject_pw.spec.config_drive.admin_pass == "root-pw"


def test_drive_wanted_by_seed_or_by_the_operator(settings: Settings) -> None:
    seeded = build_spec(settings, options(seed="nocloud")).spec.config_drive
    assert seeded is not None and seeded.seed == "nocloud"
    forced = build_spec(dataclasses.replace(settings, force_config_drive=True), options())
    assert forced.spec.config_drive is not None


def test_drive_carries_what_would_be_injected(settings: Settings, key_file: Path) -> None:
    """With a drive, inject_* go into it: the operator's injection switches do not apply."""
    built = build_spec(settings, options(config_drive=True, inject_keys=(key_file,)))
    assert built.spec.injection is None
    assert built.spec.config_drive is not None
    assert built.spec.config_drive.ssh_keys == (("bob@desk", KEY),)


def test_drive_limits(settings: Settings, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"#" * (USER_DATA_MAX + 1))
    error = refused(settings, options(config_drive=True, user_data=big))
    assert error.reason == "too-large" and str(USER_DATA_MAX) in error.message
    exact = tmp_path / "exact"
    exact.write_bytes(b"#" * USER_DATA_MAX)
    assert build_spec(settings, options(config_drive=True, user_data=exact)).spec.config_drive
    half = tmp_path / "half"
    half.write_bytes(b"\0" * (INJECTED_MAX // 2 + 1))
    files = (("/a", half), ("/b", half))
    error = refused(settings, options(config_drive=True, inject_files=files))
    assert error.reason == "too-large" and "total" in error.message
    missing = refused(settings, options(config_drive=True, user_data=tmp_path / "nope"))
    assert "cannot read user data" in missing.message


def test_ssh_keys_are_checked(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "key"
    bad.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert refused(settings, options(config_drive=True, ssh_keys=(bad,))).reason == "bad-key"
    nameless = tmp_path / "laptop.pub"
    nameless.write_text("ssh-rsa AAAAB3NzaC1yc2E\n")
    drive = build_spec(settings, options(config_drive=True, ssh_keys=(nameless,))).spec
    assert drive.config_drive is not None
    assert drive.config_drive.ssh_keys == (("laptop", "ssh-rsa AAAAB3NzaC1yc2E"),)


# --- NICs and network data --------------------------------------------------------------


def test_nic_parsing() -> None:
    nic = Nic.parse(
        "mac=52:54:00:AA:BB:CC,ip=192.0.2.5/24,gateway=192.0.2.1,dns=192.0.2.53,mtu=1400"
    )
    assert nic == Nic("52:54:00:AA:BB:CC", "192.0.2.5/24", "192.0.2.1", "192.0.2.53", 1400)
    assert Nic.parse("mac=52:54:00:00:00:01") == Nic("52:54:00:00:00:01")
    assert Nic.parse("mac=52:54:00:00:00:02,ip=dhcp").fields() == {
        "mac": "52:54:00:00:00:02",
        "ip": "dhcp",
    }
    for bad in ("ip=dhcp", "mac=m,vlan=3", "mac=m,mtu=big", "mac"):
        with pytest.raises(InvalidRequest) as err:
            Nic.parse(bad)
        assert err.value.reason == "bad-option"


def test_nics_become_network_data_or_network_config(settings: Settings) -> None:
    nics = (Nic("52:54:00:AA:BB:CC", "192.0.2.5/24", gateway="192.0.2.1"),)
    drive = build_spec(settings, options(config_drive=True, nics=nics)).spec.config_drive
    assert drive is not None and drive.network_data is not None
    assert drive.network_data["links"][0]["ethernet_mac_address"] == "52:54:00:aa:bb:cc"
    assert drive.network_data["networks"][0]["ip_address"] == "192.0.2.5"
    seed = build_spec(settings, options(seed="nocloud", nics=nics)).spec.config_drive
    assert seed is not None and seed.network_data is not None
    assert seed.network_data["version"] == 2
    assert seed.network_data["ethernets"]["eth0"]["addresses"] == ["192.0.2.5/24"]
    with pytest.raises(InvalidRequest) as err:
        Nic("52:54:00:00:00:03", "not-an-ip")
    assert err.value.reason == "bad-address"


def test_network_data_file(settings: Settings, tmp_path: Path) -> None:
    doc = {"links": [], "networks": [], "services": []}
    path = tmp_path / "nd.json"
    path.write_text(json.dumps(doc))
    drive = build_spec(settings, options(config_drive=True, network_data=path)).spec.config_drive
    assert drive is not None and drive.network_data == doc
    path.write_text("{not json")
    assert "is not JSON" in refused(settings, options(config_drive=True, network_data=path)).message


def test_key_values() -> None:
    assert key_values(("a=1", "b==2", "c="), "--meta") == (("a", "1"), ("b", "=2"), ("c", ""))
    for bad in ("novalue", "=x"):
        with pytest.raises(InvalidRequest, match="must be KEY=VALUE"):
            key_values((bad,), "--meta")


# --- guest paths ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["relative", "../etc/x", "/a/../b", "/a/./b", "/a//b", "/a/", "//a", "/a\x00b", "", "/"]
)
def test_bad_guest_paths(settings: Settings, tmp_path: Path, bad: str) -> None:
    payload = tmp_path / "p"
    payload.write_bytes(b"x")
    with pytest.raises(InvalidRequest) as err:
        guest_path(bad)
    assert err.value.reason == "bad-guest-path"
    error = refused(settings, options(config_drive=True, inject_files=((bad, payload),)))
    assert error.reason == "bad-guest-path"


def test_good_guest_paths() -> None:
    for good in ("/etc/motd", "/opt/app/conf.ini", "/a.b/c..d"):
        assert guest_path(good) == good


# --- injection policy -------------------------------------------------------------------


def test_injection_off_by_default(settings: Settings, tmp_path: Path) -> None:
    payload = tmp_path / "motd"
    payload.write_bytes(b"hi")
    for wanted in (
        {"inject_files": (("/etc/motd", payload),)},
        {"inject_password": "pw"},
        {"inject_network": payload},
        {"inject_keys": (tmp_path / "does-not-matter.pub",)},  # refused before it is read
    ):
        error = refused(settings, options(**wanted))
        assert error.reason == "injection-off" and error.exit_code == 2
        assert "inject_partition = -2" in error.message


def test_injection_switches(settings: Settings, tmp_path: Path, key_file: Path) -> None:
    on = injecting(settings, 1)
    error = refused(on, options(inject_keys=(key_file,)))
    assert (error.reason, error.message) == (
        "injection-off",
        "key injection is off ([libvirt] inject_key = false)",
    )
    error = refused(on, options(inject_password="pw"))
    assert "inject_password = false" in error.message
    payload = tmp_path / "net"
    payload.write_bytes(b"auto eth0\n")
    built = build_spec(
        injecting(settings, 1, inject_key=True, inject_password=True),
        options(inject_keys=(key_file,), inject_password="pw", inject_network=payload),
    )
    assert built.spec.config_drive is None
    assert built.spec.injection == Injection(
        partition=1,
        keys=(KEY,),
        password="pw",
        files=(("/etc/network/interfaces", b"auto eth0\n"),),
    )


def test_check_injection_policy_on_plain_values(settings: Settings) -> None:
    files = Injection(partition=-1, files=(("/etc/motd", b"x"),))
    check_injection_policy(None, settings.libvirt)
    check_injection_policy(Injection(partition=-1), settings.libvirt)  # nothing to write
    with pytest.raises(InvalidRequest) as err:
        check_injection_policy(files, settings.libvirt)
    assert err.value.reason == "injection-off"
    lib = injecting(settings).libvirt
    check_injection_policy(files, lib)
    for bad in (
        Injection(partition=-1, keys=(KEY,)),
        Injection(partition=-1, password="pw"),
        Injection(partition=-3, files=(("/a", b""),)),
        Injection(partition=-1, files=(("a/../b", b""),)),
    ):
        with pytest.raises(InvalidRequest):
            check_injection_policy(bad, lib)


def _spec_with(injection: Injection) -> InstanceSpec:
    return InstanceSpec("vm", UUID, Flavor("f", 1, 64, 1), injection=injection)


def test_python_api_cannot_inject_while_injection_is_off(settings: Settings) -> None:
    """A caller that skips build_spec still meets the policy, before any tool runs."""
    runner = FakeRunner()
    host = Host(settings, runner=runner)
    spec = _spec_with(Injection(partition=0, files=(("/etc/motd", b"x"),)))
    for attempt in (host.create_instance, host.plan):
        with pytest.raises(InvalidRequest) as err:
            attempt(spec, ImageRequest("/nonexistent/root.raw"))
        assert err.value.reason == "injection-off"
    assert runner.calls == 0
    assert not settings.instances_path.exists() or host.instances() == []


def test_python_api_plan_carries_an_allowed_injection(settings: Settings) -> None:
    host = Host(injecting(settings, 0, inject_key=True), runner=FakeRunner())
    injection = Injection(partition=0, keys=(KEY,))
    plan = host.plan(_spec_with(injection), host.resolve(ImageRequest("/nonexistent/root.raw")))
    assert plan.injection == injection
    with pytest.raises(InvalidRequest) as err:  # keys allowed, passwords not
        host.plan(
            _spec_with(Injection(partition=0, password="pw")),
            host.resolve(ImageRequest("/nonexistent/r")),
        )
    assert err.value.reason == "injection-off"
