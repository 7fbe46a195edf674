"""The documents on a config drive, as Nova lays them out, and NoCloud's equivalents.

Pure: returns {relative path: bytes}. JSON is written with sorted keys; user data passes through
untouched as bytes.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from vmdisk.errors import InvalidRequest
from vmdisk.macaddr import check_mac
from vmdisk.model import ConfigDriveSpec

#: Nova's metadata versions; with the default config_drive_skip_versions only these EC2 ones.
OPENSTACK_VERSIONS = (
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
    "2020-10-14",
    "2025-04-04",
    "latest",
)
EC2_VERSIONS = ("2009-04-04", "latest")
AVAILABILITY_ZONE = "nova"


@dataclass(frozen=True, slots=True)
class Identity:
    uuid: str
    name: str
    flavor: str
    image_id: str
    disks: tuple[str, ...]  # device names in guest order: vda, vdb, ...
    random_seed: bytes


def _at_least(version: str, since: str) -> bool:
    return version == "latest" or version >= since


def _dump(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True).encode()


def hostname(identity: Identity, spec: ConfigDriveSpec) -> str:
    return spec.hostname or identity.name.lower().replace("_", "-").replace(".", "-")


def meta_data(identity: Identity, spec: ConfigDriveSpec, version: str) -> dict[str, Any]:
    md: dict[str, Any] = {
        "uuid": identity.uuid,
        "name": identity.name,
        "hostname": hostname(identity, spec),
        "launch_index": 0,
        "availability_zone": AVAILABILITY_ZONE,
    }
    if spec.meta:
        md["meta"] = dict(spec.meta)
    if spec.files:
        md["files"] = [
            {"path": path, "content_path": f"/content/{i:04d}"}
            for i, (path, _) in enumerate(spec.files)
        ]
    if spec.admin_pass:
        md["admin_pass"] = spec.admin_pass
    if spec.ssh_keys:
        md["public_keys"] = dict(spec.ssh_keys)
        md["keys"] = [{"name": n, "type": "ssh", "data": k} for n, k in spec.ssh_keys]
    if _at_least(version, "2013-04-04"):
        md["random_seed"] = base64.b64encode(identity.random_seed).decode()
    if _at_least(version, "2015-10-15"):
        md["project_id"] = "vmdisk"
    if _at_least(version, "2016-06-30"):
        md["devices"] = []
    if _at_least(version, "2020-10-14"):
        md["dedicated_cpus"] = []
    return md


def ec2_meta_data(identity: Identity, spec: ConfigDriveSpec) -> dict[str, Any]:
    host = hostname(identity, spec)
    md: dict[str, Any] = {
        "ami-id": f"ami-{identity.image_id.encode().hex()[:8]}",
        "ami-launch-index": 0,
        "ami-manifest-path": "FIXME",
        "instance-id": f"i-{identity.uuid[:8]}",
        "hostname": host,
        "local-hostname": host,
        "public-hostname": host,
        "local-ipv4": None,
        "public-ipv4": None,
        "reservation-id": f"r-{identity.uuid[-8:]}",
        "security-groups": [],
        "instance-type": identity.flavor,
        "instance-action": "none",
        "placement": {"availability-zone": AVAILABILITY_ZONE},
        "block-device-mapping": {"ami": identity.disks[0], "root": f"/dev/{identity.disks[0]}"},
    }
    if spec.ssh_keys:
        md["public-keys"] = {"0": {"openssh-key": spec.ssh_keys[0][1]}}
    return md


def config_drive_files(identity: Identity, spec: ConfigDriveSpec) -> dict[str, bytes]:
    """The config-2 tree: openstack/<version>/..., openstack/content/000N, ec2/<version>/..."""
    files: dict[str, bytes] = {}
    network = spec.network_data if spec.network_data is not None else {}
    for version in OPENSTACK_VERSIONS:
        base = f"openstack/{version}"
        files[f"{base}/meta_data.json"] = _dump(meta_data(identity, spec, version))
        if spec.user_data is not None:
            files[f"{base}/user_data"] = spec.user_data
        if _at_least(version, "2013-10-17"):
            files[f"{base}/vendor_data.json"] = _dump({})
        if _at_least(version, "2015-10-15"):
            files[f"{base}/network_data.json"] = _dump(network)
        if _at_least(version, "2016-10-06"):
            files[f"{base}/vendor_data2.json"] = _dump({"static": {}})
    for index, (_, content) in enumerate(spec.files):
        files[f"openstack/content/{index:04d}"] = content
    for version in EC2_VERSIONS:
        files[f"ec2/{version}/meta-data.json"] = _dump(ec2_meta_data(identity, spec))
        if spec.user_data is not None:
            files[f"ec2/{version}/user-data"] = spec.user_data
    return files


def nocloud_files(identity: Identity, spec: ConfigDriveSpec) -> dict[str, bytes]:
    """A NoCloud seed (label cidata). JSON is YAML, so meta-data is written as JSON."""
    if spec.network_data is not None and "version" not in spec.network_data:
        raise InvalidRequest(
            "--network-data is OpenStack network_data.json; a NoCloud seed "
            "takes --nic (network-config v2)",
            reason="bad-option",
        )
    meta: dict[str, Any] = {
        "instance-id": identity.uuid,
        "local-hostname": hostname(identity, spec),
    }
    if spec.ssh_keys:
        meta["public-keys"] = [key for _, key in spec.ssh_keys]
    files = {
        "meta-data": _dump(meta),
        "user-data": spec.user_data if spec.user_data is not None else b"",
        "vendor-data": b"",
    }
    if spec.network_data is not None:
        files["network-config"] = _dump(spec.network_data)
    return files


def network_data_from_nics(nics: list[dict[str, str]]) -> dict[str, Any]:
    """`--nic mac=..,ip=CIDR|dhcp,gateway=..,dns=..` -> OpenStack network_data.json."""
    links, networks, services = [], [], []
    for index, nic in enumerate(nics):
        unknown = set(nic) - {"mac", "ip", "gateway", "dns", "mtu"}
        if unknown or "mac" not in nic:
            raise InvalidRequest(
                f"--nic needs mac=... and takes ip, gateway, dns, mtu; got {sorted(nic)}",
                reason="bad-option",
            )
        link = f"tap{index}"
        mac = _mac(nic["mac"])
        links.append(
            {
                "id": link,
                "vif_id": link,
                "type": "phy",
                "ethernet_mac_address": mac,
                "mtu": int(nic["mtu"]) if nic.get("mtu") else None,
            }
        )
        networks.append(_network(index, link, nic))
        if nic.get("dns"):
            services.append({"type": "dns", "address": nic["dns"]})
    return {"links": links, "networks": networks, "services": services}


def _network(index: int, link: str, nic: dict[str, str]) -> dict[str, Any]:
    ip = nic.get("ip", "dhcp")
    if ip == "dhcp":
        return {
            "id": f"network{index}",
            "type": "ipv4_dhcp",
            "link": link,
            "network_id": f"network{index}",
        }
    try:
        iface = ipaddress.ip_interface(ip if "/" in ip else f"{ip}/24")
    except ValueError as exc:
        raise InvalidRequest(f"--nic ip {ip!r} is not an address", reason="bad-option") from exc
    kind = "ipv4" if iface.version == 4 else "ipv6"
    net: dict[str, Any] = {
        "id": f"network{index}",
        "type": kind,
        "link": link,
        "network_id": f"network{index}",
        "ip_address": str(iface.ip),
        "netmask": str(iface.netmask),
        "routes": [],
    }
    if nic.get("gateway"):
        default = "0.0.0.0" if kind == "ipv4" else "::"  # noqa: S104 - a route, not a bind
        net["routes"].append({"network": default, "netmask": default, "gateway": nic["gateway"]})
    return net


def nocloud_network_config(nics: list[dict[str, str]]) -> dict[str, Any]:
    """The same NICs as netplan-style network-config v2, for NoCloud seeds."""
    ethernets: dict[str, Any] = {}
    for index, nic in enumerate(nics):
        entry: dict[str, Any] = {
            "match": {"macaddress": _mac(nic["mac"])},
            "set-name": f"eth{index}",
        }
        ip = nic.get("ip", "dhcp")
        if ip == "dhcp":
            entry["dhcp4"] = True
        else:
            entry["addresses"] = [ip if "/" in ip else f"{ip}/24"]
            if nic.get("gateway"):
                entry["routes"] = [{"to": "default", "via": nic["gateway"]}]
        if nic.get("dns"):
            entry["nameservers"] = {"addresses": [nic["dns"]]}
        ethernets[f"eth{index}"] = entry
    return {"version": 2, "ethernets": ethernets}


def _mac(text: str) -> str:
    """The MAC as qemu and libvirt will be given it, so cloud-init matches the NIC it sees."""
    try:
        return check_mac(text)
    except ValueError as exc:
        raise InvalidRequest(f"--nic {exc}", reason="bad-option") from exc
