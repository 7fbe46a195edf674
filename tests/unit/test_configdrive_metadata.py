"""The config-drive documents against golden JSON: what a guest's cloud-init reads."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from vmdisk.configdrive.metadata import (
    OPENSTACK_VERSIONS,
    Identity,
    config_drive_files,
    ec2_meta_data,
    hostname,
    meta_data,
    network_data_from_nics,
    nocloud_files,
    nocloud_network_config,
)
from vmdisk.errors import InvalidRequest
from vmdisk.model import ConfigDriveSpec

GOLDEN = Path(__file__).parent.parent / "data" / "configdrive"

IDENTITY = Identity(
    uuid="0b7a5c1e-1111-4222-8333-944455556666",
    name="Web_01.example",
    flavor="m1.small",
    image_id="cirros",
    disks=("vda", "vdb"),
    random_seed=bytes(range(16)),
)

NICS = [
    {
        "mac": "52:54:00:AA:BB:01",
        "ip": "192.0.2.10/24",
        "gateway": "192.0.2.1",
        "dns": "192.0.2.53",
    },
    {"mac": "52:54:00:aa:bb:02"},
    {"mac": "52:54:00:aa:bb:03", "ip": "2001:db8::5/64", "gateway": "2001:db8::1", "mtu": "9000"},
    {"mac": "52:54:00:aa:bb:04", "ip": "198.51.100.7"},
]

FULL = ConfigDriveSpec(
    user_data=b"#cloud-config\nruncmd: [true]\n",
    ssh_keys=(("alice", "ssh-ed25519 AAAAalice"), ("bob", "ssh-rsa AAAAbob")),
    admin_pass="s3cret",
    files=(("/etc/motd", b"hello\n"), ("/root/x.bin", b"\x00\xff")),
    meta=(("role", "web"), ("tier", "1")),
    network_data=network_data_from_nics(NICS),
)


def golden(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


def test_meta_data_latest_matches_golden() -> None:
    assert meta_data(IDENTITY, FULL, "latest") == golden("meta_data.json")


def test_meta_data_oldest_version_lacks_later_keys() -> None:
    assert meta_data(IDENTITY, ConfigDriveSpec(), "2012-08-10") == golden("meta_data-2012.json")


@pytest.mark.parametrize(
    ("version", "present", "absent"),
    [
        ("2013-04-04", {"random_seed"}, {"project_id", "devices", "dedicated_cpus"}),
        ("2015-10-15", {"random_seed", "project_id"}, {"devices", "dedicated_cpus"}),
        ("2016-06-30", {"project_id", "devices"}, {"dedicated_cpus"}),
        ("2020-10-14", {"devices", "dedicated_cpus"}, set()),
    ],
)
def test_meta_data_keys_follow_the_version(
    version: str, present: set[str], absent: set[str]
) -> None:
    keys = set(meta_data(IDENTITY, ConfigDriveSpec(), version))
    assert present <= keys
    assert not (absent & keys)


def test_random_seed_is_base64_of_the_identity_seed() -> None:
    md = meta_data(IDENTITY, ConfigDriveSpec(), "latest")
    assert base64.b64decode(md["random_seed"]) == bytes(range(16))


def test_hostname_is_derived_from_the_name_unless_given() -> None:
    assert hostname(IDENTITY, ConfigDriveSpec()) == "web-01-example"
    assert hostname(IDENTITY, ConfigDriveSpec(hostname="explicit")) == "explicit"


def test_network_data_from_nics_matches_golden() -> None:
    assert network_data_from_nics(NICS) == golden("network_data.json")


def test_ec2_meta_data_matches_golden() -> None:
    assert ec2_meta_data(IDENTITY, FULL) == golden("ec2-meta-data.json")


def test_ec2_meta_data_without_keys_has_no_public_keys() -> None:
    md = ec2_meta_data(IDENTITY, ConfigDriveSpec(hostname="h"))
    assert "public-keys" not in md
    assert md["local-hostname"] == "h"
    assert md["block-device-mapping"] == {"ami": "vda", "root": "/dev/vda"}


def test_config_drive_tree_lists_every_document() -> None:
    files = config_drive_files(IDENTITY, FULL)
    assert sorted(files) == golden("config-2-tree.json")


def test_config_drive_tree_contents() -> None:
    files = config_drive_files(IDENTITY, FULL)
    latest = "openstack/latest"
    assert json.loads(files[f"{latest}/meta_data.json"]) == golden("meta_data.json")
    assert json.loads(files[f"{latest}/network_data.json"]) == golden("network_data.json")
    assert files[f"{latest}/vendor_data.json"] == b"{}"
    assert files[f"{latest}/vendor_data2.json"] == b'{"static": {}}'
    assert files[f"{latest}/user_data"] == FULL.user_data
    assert files["openstack/content/0000"] == b"hello\n"
    assert files["openstack/content/0001"] == b"\x00\xff"
    assert json.loads(files["ec2/latest/meta-data.json"]) == golden("ec2-meta-data.json")
    assert files["ec2/2009-04-04/user-data"] == FULL.user_data
    # JSON is written with sorted keys, so the bytes are reproducible.
    assert (
        files[f"{latest}/meta_data.json"]
        == json.dumps(golden("meta_data.json"), sort_keys=True).encode()
    )


def test_config_drive_without_user_data_or_network_writes_empty_network() -> None:
    files = config_drive_files(IDENTITY, ConfigDriveSpec())
    assert not any(name.endswith(("user_data", "user-data")) for name in files)
    assert files["openstack/latest/network_data.json"] == b"{}"
    assert "openstack/2012-08-10/vendor_data.json" not in files
    assert "openstack/2013-10-17/vendor_data.json" in files
    assert "openstack/2016-06-30/vendor_data2.json" not in files
    assert {f"openstack/{v}/meta_data.json" for v in OPENSTACK_VERSIONS} <= set(files)


def test_nocloud_seed_matches_golden() -> None:
    spec = ConfigDriveSpec(
        user_data=b"#cloud-config\n",
        ssh_keys=(("alice", "ssh-ed25519 AAAAalice"),),
        network_data=nocloud_network_config(NICS),
        seed="nocloud",
    )
    files = nocloud_files(IDENTITY, spec)
    assert sorted(files) == ["meta-data", "network-config", "user-data", "vendor-data"]
    assert json.loads(files["meta-data"]) == golden("nocloud-meta-data.json")
    assert json.loads(files["network-config"]) == golden("nocloud-network-config.json")
    assert files["user-data"] == b"#cloud-config\n"
    assert files["vendor-data"] == b""


def test_nocloud_seed_minimal() -> None:
    files = nocloud_files(IDENTITY, ConfigDriveSpec(seed="nocloud"))
    assert sorted(files) == ["meta-data", "user-data", "vendor-data"]
    assert files["user-data"] == b""
    assert json.loads(files["meta-data"]) == {
        "instance-id": IDENTITY.uuid,
        "local-hostname": "web-01-example",
    }


def test_nocloud_refuses_openstack_network_data() -> None:
    spec = ConfigDriveSpec(network_data=network_data_from_nics(NICS[:1]), seed="nocloud")
    with pytest.raises(InvalidRequest, match="network-config v2"):
        nocloud_files(IDENTITY, spec)


@pytest.mark.parametrize(
    "nic",
    [{"ip": "192.0.2.1"}, {"mac": "52:54:00:00:00:01", "vlan": "5"}],
)
def test_nic_needs_mac_and_known_keys(nic: dict[str, str]) -> None:
    with pytest.raises(InvalidRequest, match="--nic needs mac"):
        network_data_from_nics([nic])


def test_nic_with_a_bad_address_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="not an address"):
        network_data_from_nics([{"mac": "52:54:00:00:00:01", "ip": "300.1.1.1"}])
