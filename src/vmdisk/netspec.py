"""`[libvirt] network`: the one NIC a domain gets, parsed once at load with a strict grammar.

The setting is "none", "user" or "bridge:NAME". NAME ends up inside qemu's `-netdev
bridge,...,br=NAME` option string and libvirt's XML, so it must be a Linux interface name: 1-15
characters (IFNAMSIZ less the NUL) of [A-Za-z0-9_.-]. A comma would smuggle in a qemu
sub-option (`bridge:br0,helper=/x`), so the grammar, not the renderers, keeps it out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

BRIDGE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
NIC_MODEL = re.compile(r"[A-Za-z0-9_-]{1,32}")
NETWORK_GRAMMAR = "none, user or bridge:NAME"


class InterfaceKind(StrEnum):
    USER = "user"
    BRIDGE = "bridge"


@dataclass(frozen=True, slots=True)
class Interface:
    """A NIC: qemu's user-mode network, or a tap on a host bridge. Checked when made."""

    kind: InterfaceKind
    bridge: str | None = None
    model: str = "virtio"

    def __post_init__(self) -> None:
        if self.kind not in tuple(InterfaceKind):
            raise ValueError(f"interface kind {self.kind!r} is not user or bridge")
        object.__setattr__(self, "kind", InterfaceKind(self.kind))
        if self.kind is InterfaceKind.BRIDGE:
            check_bridge_name(self.bridge or "")
        elif self.bridge is not None:
            raise ValueError("only a bridge interface names a bridge")
        if not NIC_MODEL.fullmatch(self.model):
            raise ValueError(f"NIC model {self.model!r} must be letters, digits, '_' or '-'")

    def __str__(self) -> str:
        """The setting's own spelling, so a parsed value prints as the operator wrote it."""
        return f"bridge:{self.bridge}" if self.kind is InterfaceKind.BRIDGE else str(self.kind)


def check_bridge_name(name: str) -> str:
    """A Linux interface name, or ValueError: what the kernel and qemu's option parser accept."""
    if not BRIDGE_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"bridge name {name!r} must be a Linux interface name: "
            "1-15 characters of A-Z a-z 0-9 _ . -"
        )
    return name


def parse_network(setting: str) -> Interface | None:
    """`[libvirt] network`: "none" (or empty) is no NIC, "user", or "bridge:NAME"."""
    if setting in ("", "none"):
        return None
    if setting == "user":
        return Interface(InterfaceKind.USER)
    kind, sep, name = setting.partition(":")
    if kind == "bridge" and sep:
        return Interface(InterfaceKind.BRIDGE, check_bridge_name(name))
    raise ValueError(f"network {setting!r} must be {NETWORK_GRAMMAR}")


def format_network(interface: Interface | None) -> str:
    """The inverse of parse_network."""
    return "none" if interface is None else str(interface)
