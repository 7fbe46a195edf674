"""A user's `--network-data` (OpenStack network_data.json) checked against what cloud-init reads.

cloud-init's reader (`convert_net_json`) indexes `links[].id/type`, `networks[].link/type`,
`vlan_link/vlan_id/vlan_mac_address` of VLANs and `bond_links` of bonds without looking first,
and finds a physical NIC by `ethernet_mac_address`: any of those missing makes the guest fail
to configure its network at boot, far from the mistake. We refuse them here, naming the field
by its JSON path (`networks[1].link`). A NoCloud seed's network-config v2 is only required to
be a mapping with `version: 2`.
"""

from __future__ import annotations

from typing import Any

from vmdisk.errors import InvalidRequest
from vmdisk.validate import check_address, check_interface, check_mac

PHYSICAL = frozenset(
    {"bgpovs", "bridge", "cascading", "dvs", "ethernet", "hw_veb", "hyperv", "ovs", "phy"}
    | {"tap", "vhostuser", "vif"}
)
LINK_TYPES = PHYSICAL | {"bond", "vlan"}
STATIC = frozenset({"ipv4", "ipv6", "static", "static6"})
NETWORK_TYPES = STATIC | {
    "ipv4_dhcp",
    "ipv6_dhcp",
    "ipv6_slaac",
    "ipv6_dhcpv6-stateless",
    "ipv6_dhcpv6-stateful",
}


def _bad(path: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"network data: {path} {problem}", reason="bad-network-data")


def _get(obj: dict[str, Any], key: str, path: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise _bad(f"{path}.{key}", "is missing")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _bad(f"{path}.{key}", f"must be {_article(names)}, not {type(value).__name__}")
    return value


def _article(name: str) -> str:
    words = {"str": "a string", "int": "a number", "list": "a list", "dict": "an object"}
    return " or ".join(words.get(n, n) for n in name.split(" or "))


def _objects(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = data.get(key, [])
    if not isinstance(items, list):
        raise _bad(key, "must be a list")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _bad(f"{key}[{index}]", "must be an object")
    return items


def check_network_data(data: Any) -> dict[str, Any]:
    """network_data.json as cloud-init's ConfigDrive reader needs it, or InvalidRequest."""
    if not isinstance(data, dict):
        raise _bad("the document", "must be a JSON object with links, networks and services")
    unknown = set(data) - {"links", "networks", "services"}
    if unknown:
        raise _bad(sorted(unknown)[0], "is not a network_data.json key (links, networks, services)")
    links = _links(_objects(data, "links"))
    _networks(_objects(data, "networks"), links)
    for index, service in enumerate(_objects(data, "services")):
        path = f"services[{index}]"
        if _get(service, "type", path, str) == "dns":
            check_address(_get(service, "address", path, str), f"network data: {path}.address")
    return data


def _links(links: list[dict[str, Any]]) -> set[str]:
    ids: set[str] = set()
    for index, link in enumerate(links):
        path = f"links[{index}]"
        link_id = _get(link, "id", path, str)
        if link_id in ids:
            raise _bad(f"{path}.id", f"{link_id!r} is used twice")
        ids.add(link_id)
        kind = _get(link, "type", path, str)
        if kind not in LINK_TYPES:
            raise _bad(f"{path}.type", f"{kind!r} is not one of {', '.join(sorted(LINK_TYPES))}")
        if link.get("mtu") is not None:
            _get(link, "mtu", path, int)
        if kind == "vlan":
            _get(link, "vlan_id", path, int)
            _get(link, "vlan_link", path, str)
            check_mac(_get(link, "vlan_mac_address", path, str), f"network data: {path}")
        elif kind == "bond":
            _get(link, "bond_links", path, list)
        elif "name" not in link or link.get("ethernet_mac_address") is not None:
            # cloud-init finds an unnamed physical NIC by its MAC, and nothing else
            mac = _get(link, "ethernet_mac_address", path, str)
            check_mac(mac, f"network data: {path}.ethernet_mac_address")
    for index, link in enumerate(links):
        for key in ("vlan_link", "bond_links"):
            refs = link.get(key)
            for ref in refs if isinstance(refs, list) else [refs] if refs is not None else []:
                if ref not in ids:
                    raise _bad(f"links[{index}].{key}", f"names no link: {ref!r}")
    return ids


def _networks(networks: list[dict[str, Any]], links: set[str]) -> None:
    for index, net in enumerate(networks):
        path = f"networks[{index}]"
        link = _get(net, "link", path, str)
        if link not in links:
            raise _bad(f"{path}.link", f"{link!r} names no link (links: {sorted(links)})")
        kind = _get(net, "type", path, str)
        if kind not in NETWORK_TYPES:
            raise _bad(f"{path}.type", f"{kind!r} is not one of {', '.join(sorted(NETWORK_TYPES))}")
        if kind in STATIC:
            address = _get(net, "ip_address", path, str)
            mask = net.get("netmask")
            where = f"network data: {path}.ip_address"
            check_interface(f"{address}/{mask}" if mask and "/" not in address else address, where)
        routes = net.get("routes", [])
        if not isinstance(routes, list):
            raise _bad(f"{path}.routes", "must be a list")
        for r, route in enumerate(routes):
            rpath = f"{path}.routes[{r}]"
            if not isinstance(route, dict):
                raise _bad(rpath, "must be an object")
            check_address(_get(route, "gateway", rpath, str), f"network data: {rpath}.gateway")


def check_network_config_v2(data: Any) -> dict[str, Any]:
    """A NoCloud seed's network-config: a mapping that says `version: 2`."""
    if not isinstance(data, dict) or data.get("version") != 2:
        raise InvalidRequest(
            "network data for a NoCloud seed must be network-config version 2 "
            "(a mapping with version: 2); --nic writes it for you",
            reason="bad-network-data",
        )
    return data
