"""The guest's MAC address: checked when given, derived from the uuid when not.

The same MAC must reach qemu (`-device ...,mac=`), libvirt (`<mac address=>`) and the config
drive's network_data.json, or cloud-init finds no NIC to configure ("Unable to find a system
nic"). The instance record keeps the MACs given at create; without one, every reader derives
the same default from the uuid.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def check_mac(text: str) -> str:
    """A unicast Ethernet address in qemu's and libvirt's spelling, or ValueError. It lands in
    a qemu option string, so nothing but hex digits and colons may pass."""
    mac = text.strip().lower().replace("-", ":")
    if not MAC.fullmatch(mac):
        raise ValueError(f"MAC address {text!r} must be six hex octets, e.g. 52:54:00:12:34:56")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"MAC address {text!r} is a multicast address")
    return mac


def default_mac(uuid: str) -> str:
    """The instance's own MAC when none was given: qemu's 52:54:00 prefix and three bytes of
    the uuid's hash, so the drive's network_data.json and every later boot agree on it."""
    digest = hashlib.sha256(uuid.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def macs_in(network_data: dict[str, Any] | None) -> list[str]:
    """The MACs a drive's network data configures: OpenStack network_data.json links, or
    network-config v2 `match: {macaddress: ...}`, in order."""
    if not network_data:
        return []
    found: list[str] = []
    for link in network_data.get("links") or ():
        if isinstance(link, dict) and link.get("ethernet_mac_address"):
            found.append(str(link["ethernet_mac_address"]))
    ethernets = network_data.get("ethernets")
    if isinstance(ethernets, dict):
        for entry in ethernets.values():
            match = entry.get("match") if isinstance(entry, dict) else None
            if isinstance(match, dict) and match.get("macaddress"):
                found.append(str(match["macaddress"]))
    return found
