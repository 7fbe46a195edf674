"""Which addresses a download may connect to: the SSRF filter, by address class.

An address is public or belongs to one internal class (loopback, metadata, private, ...).
IPv4 embedded in IPv6 (mapped, compatible, NAT64, 6to4, Teredo) is classified by what it
embeds, and legacy IPv4 spellings (decimal, hex, octal, short forms) by the address they
mean, so no spelling moves an address out of its class.

The rule (`hop_allowed`): a connection may always go to a public address, and to an internal
one only of the class the request started from. A source the user names on loopback may be
fetched; a public server (or one in another class) can never send us inward.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from enum import StrEnum

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: host name -> the addresses a connection to it may use, as text.
Resolver = Callable[[str], list[str]]


class AddressClass(StrEnum):
    PUBLIC = "public"
    LOOPBACK = "loopback"  # 127/8, ::1, and 0.0.0.0/:: (which reach the host itself)
    METADATA = "metadata"  # cloud instance metadata services
    LINK_LOCAL = "link-local"
    PRIVATE = "private"  # RFC 1918, ULA, site-local, local-use NAT64
    SHARED = "shared"  # 100.64/10, carrier-grade NAT
    RESERVED = "reserved"  # multicast, broadcast, benchmarking, IETF, future use


_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

#: Most specific first: the metadata addresses sit inside link-local, shared and ULA space.
_TABLE: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, AddressClass], ...] = (
    (_V4("169.254.169.254/32"), AddressClass.METADATA),  # AWS, GCP, Azure, OpenStack
    (_V4("169.254.170.2/32"), AddressClass.METADATA),  # AWS ECS task metadata
    (_V4("100.100.100.200/32"), AddressClass.METADATA),  # Alibaba Cloud
    (_V6("fd00:ec2::254/128"), AddressClass.METADATA),  # AWS over IPv6
    (_V4("0.0.0.0/8"), AddressClass.LOOPBACK),
    (_V4("127.0.0.0/8"), AddressClass.LOOPBACK),
    (_V6("::/128"), AddressClass.LOOPBACK),
    (_V6("::1/128"), AddressClass.LOOPBACK),
    (_V4("169.254.0.0/16"), AddressClass.LINK_LOCAL),
    (_V6("fe80::/10"), AddressClass.LINK_LOCAL),
    (_V4("10.0.0.0/8"), AddressClass.PRIVATE),
    (_V4("172.16.0.0/12"), AddressClass.PRIVATE),
    (_V4("192.168.0.0/16"), AddressClass.PRIVATE),
    (_V6("fc00::/7"), AddressClass.PRIVATE),
    (_V6("fec0::/10"), AddressClass.PRIVATE),
    (_V6("64:ff9b:1::/48"), AddressClass.PRIVATE),  # RFC 8215: a translator of our own
    (_V4("100.64.0.0/10"), AddressClass.SHARED),
    (_V4("192.0.0.0/24"), AddressClass.RESERVED),
    (_V4("198.18.0.0/15"), AddressClass.RESERVED),
    (_V4("224.0.0.0/3"), AddressClass.RESERVED),  # multicast, 240/4 and broadcast
    (_V6("ff00::/8"), AddressClass.RESERVED),
    (_V6("100::/64"), AddressClass.RESERVED),
)
_NAT64 = (_V6("64:ff9b::/96"), _V6("64:ff9b:1::/48"))
_COMPAT = _V6("::/96")


def parse_address(text: str) -> Address | None:
    """An IP address in any spelling a resolver accepts, or None for a host name.

    `[::1]`, `::1%eth0`, `2130706433`, `0x7f.1`, `0177.0.0.1` and `127.1` are all addresses.
    """
    text = text.strip().removeprefix("[").removesuffix("]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:
        # inet_aton reads exactly the legacy forms glibc's resolver and connect() accept.
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except (OSError, ValueError):
        return None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries, which a translator or tunnel would reach."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip in net for net in _NAT64):
        return [low32]
    if ip in _COMPAT and int(ip) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return [low32]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    if (int(ip) >> 32) & 0xFFFFFFFF == 0xFFFF0000 and int(ip) >> 64 == 0:  # SIIT ::ffff:0:a.b.c.d
        return [low32]
    return []


def classify(address: str | Address) -> AddressClass:
    """The class of one address; a text that is no address at all is public (a name)."""
    ip = parse_address(address) if isinstance(address, str) else address
    if ip is None:
        return AddressClass.PUBLIC
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in embedded_ipv4(ip):
            found = classify(inner)
            if found is not AddressClass.PUBLIC:
                return found
    for net, cls in _TABLE:
        if ip.version == net.version and ip in net:
            return cls
    return AddressClass.PUBLIC


def hop_allowed(origin: AddressClass | None, target: AddressClass) -> bool:
    """Public targets always; internal ones only from the same class (None: the user's own)."""
    return origin is None or target is AddressClass.PUBLIC or target is origin


def system_resolver(host: str) -> list[str]:
    """The addresses getaddrinfo gives for a TCP connection to `host`."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def host_class(
    host: str, resolve: Resolver, classify_address: Callable[[str], AddressClass] = classify
) -> AddressClass:
    """The class of a host: an address's own, else the strictest of what its name resolves to.

    A name that resolves to public and internal addresses counts as public: from it, no
    internal hop is allowed.
    """
    if parse_address(host) is not None:
        return classify_address(host)
    classes = {classify_address(a) for a in resolve(host)} or {AddressClass.PUBLIC}
    return classes.pop() if len(classes) == 1 else AddressClass.PUBLIC


def refused_addresses(
    origin: AddressClass | None,
    host: str,
    resolve: Resolver,
    classify_address: Callable[[str], AddressClass] = classify,
) -> list[str]:
    """The addresses of `host` a hop from `origin` must not reach (empty: allowed)."""
    addresses = [host] if parse_address(host) is not None else resolve(host)
    return [a for a in addresses if not hop_allowed(origin, classify_address(a))]
