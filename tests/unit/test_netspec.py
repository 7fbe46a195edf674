"""`[libvirt] network`: the grammar that keeps qemu sub-options out of a bridge name."""

from __future__ import annotations

import pytest

from vmdisk.netspec import Interface, InterfaceKind, format_network, parse_network


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", None),
        ("", None),
        ("user", Interface(InterfaceKind.USER)),
        ("bridge:br0", Interface(InterfaceKind.BRIDGE, "br0")),
        ("bridge:virbr0.100", Interface(InterfaceKind.BRIDGE, "virbr0.100")),
        ("bridge:a-b_c", Interface(InterfaceKind.BRIDGE, "a-b_c")),
        ("bridge:" + "x" * 15, Interface(InterfaceKind.BRIDGE, "x" * 15)),
    ],
)
def test_accepted_spellings_round_trip(text: str, expected: Interface | None) -> None:
    assert parse_network(text) == expected
    assert parse_network(format_network(expected)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "bogus",
        "bridge",
        "bridge:",
        "bridge:br0,helper=/x",
        "bridge:br=0",
        "bridge:" + "x" * 16,
        "bridge:br 0",
        "bridge:br/0",
        "bridge:..",
        "User",
        "tap:tap0",
    ],
)
def test_refused_spellings(text: str) -> None:
    with pytest.raises(ValueError, match="must be"):
        parse_network(text)


def test_interface_checks_itself_when_made_directly() -> None:
    assert Interface("user").kind is InterfaceKind.USER  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Linux interface name"):
        Interface(InterfaceKind.BRIDGE, "br0,helper=/x")
    with pytest.raises(ValueError, match="Linux interface name"):
        Interface(InterfaceKind.BRIDGE)
    with pytest.raises(ValueError, match="only a bridge"):
        Interface(InterfaceKind.USER, "br0")
    with pytest.raises(ValueError, match="not user or bridge"):
        Interface("tap")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NIC model"):
        Interface(InterfaceKind.USER, model="virtio,x=1")
