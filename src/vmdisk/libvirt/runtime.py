"""A guest under libvirt: `vmdisk start --via libvirt` defines the domain persistently from the
instance's libvirt.xml and starts it; stop is `virsh shutdown` (ACPI), then `destroy`.

The NIC joins libvirt's `default` NAT network, defined and started here when missing (its
dnsmasq hands out the leases `vmdisk ip` reads), or the bridge `[libvirt] network` names.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from pathlib import Path

from vmdisk.errors import BackendError, ToolError
from vmdisk.fsutil import write_atomic
from vmdisk.libvirt.domain import Domain, render
from vmdisk.libvirt.virsh import Virsh
from vmdisk.runtime.state import RuntimeInfo, VmState

DEFAULT_NETWORK = "default"
DEFAULT_NETWORK_XML = """<network>
  <name>default</name>
  <forward mode="nat"/>
  <bridge name="virbr0" stp="on" delay="0"/>
  <ip address="192.168.122.1" netmask="255.255.255.0">
    <dhcp><range start="192.168.122.2" end="192.168.122.254"/></dhcp>
  </ip>
</network>
"""
LEASE = re.compile(r"\s(ipv4)\s+(\d+\.\d+\.\d+\.\d+)/\d+")

#: `virsh domstate --reason` (state, reason) -> our state.
_STATES = {
    "running": VmState.RUNNING,
    "idle": VmState.RUNNING,
    "blocked": VmState.RUNNING,
    "paused": VmState.PAUSED,
    "pmsuspended": VmState.PAUSED,
    "in shutdown": VmState.RUNNING,
    "crashed": VmState.CRASHED,
    "dying": VmState.RUNNING,
}


class LibvirtGuest:
    """One domain, always named to virsh by its uuid: another instances_path's instance of the
    same name is never stopped, asked about or undefined by mistake."""

    def __init__(self, virsh: Virsh, name: str, uuid: str) -> None:
        self.virsh = virsh
        self.name = name
        self.uuid = uuid

    def ensure_network(self, network: str) -> None:
        """The network exists and is active: libvirt's `default` is defined if missing."""
        info = self.virsh("net-info", network, check=False)
        if "Name:" not in info:
            if network != DEFAULT_NETWORK:
                raise BackendError(f"libvirt has no network {network!r}", reason="network-missing")
            with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="vmdisk-net-") as xml:
                xml.write(DEFAULT_NETWORK_XML)
                xml.flush()
                self.virsh("net-define", xml.name)
            info = self.virsh("net-info", network)
        if not re.search(r"Active:\s+yes", info):
            self.virsh("net-start", network)

    def start(self, domain: Domain, xml_path: Path, uri: str) -> RuntimeInfo:
        """Write the domain as libvirt.xml (what is defined is what the file says), define it
        persistently and start it."""
        nic = domain.nic
        if nic is not None and nic.kind == "network":
            self.ensure_network(nic.source or DEFAULT_NETWORK)
        write_atomic(xml_path, render(domain).encode())
        self.virsh("define", str(xml_path))
        try:
            self.virsh("start", self.uuid)
        except ToolError as exc:
            raise BackendError(
                f"libvirt could not start {self.name}: {exc.stderr.strip() or exc}",
                reason="libvirt-failed",
            ) from exc
        return RuntimeInfo(
            via="libvirt",
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            uri=uri,
            network=nic.source if nic is not None else None,
            mac=nic.mac if nic is not None else None,
        )

    def state(self) -> tuple[VmState, str]:
        try:
            text = self.virsh("domstate", self.uuid, "--reason", check=False)
        except BackendError as exc:
            return VmState.UNKNOWN, exc.message
        if not text or "failed to get domain" in text or text.startswith("error"):
            return VmState.STOPPED, "not defined"
        state, _, reason = text.partition(" (")
        reason = reason.rstrip(")")
        if state == "shut off":
            return (VmState.CRASHED if reason == "crashed" else VmState.STOPPED), reason
        return _STATES.get(state, VmState.UNKNOWN), reason

    def shutdown(self) -> None:
        self.virsh("shutdown", self.uuid)

    def running(self) -> bool:
        return self.state()[0].active

    def destroy(self) -> None:
        self.virsh("destroy", self.uuid, check=False)

    def undefine(self) -> None:
        self.virsh("undefine", self.uuid, check=False)

    def address(self, network: str, mac: str) -> str | None:
        """The guest's IPv4 from the network's DHCP leases (its dnsmasq), by MAC."""
        text = self.virsh("net-dhcp-leases", network, "--mac", mac, check=False)
        found = LEASE.findall(text)
        return found[-1][1] if found else None
