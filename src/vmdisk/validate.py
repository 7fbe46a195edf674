"""Checks on what users type, made at the edge so nothing odd reaches XML, qemu or a guest.

Text that ends up in libvirt.xml, the record or a guest's metadata (image ids, sources,
hostnames, the kernel command line) must be printable Unicode: XML 1.0 cannot carry most
control characters at all, and an argv byte that is not UTF-8 arrives in Python as a lone
surrogate that no file can hold. Addresses are parsed with `ipaddress`, MACs by their syntax
and the unicast bit, and a user's network_data.json against the shape cloud-init reads.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Mapping

from vmdisk.errors import InvalidRequest

MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
CMDLINE_MAX = 2047  # x86's COMMAND_LINE_SIZE (2048) less the NUL
MTU_RANGE = (68, 65535)


def bad_character(text: str) -> str | None:
    """The first character that must not reach XML or a file, described; None if clean."""
    for index, char in enumerate(text):
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            return f"bytes that are not UTF-8 at position {index}"
        # C0, DEL and C1 controls, and the two code points XML 1.0 excludes outright
        if unicodedata.category(char) == "Cc" or code in (0xFFFE, 0xFFFF):
            return f"control character U+{code:04X} at position {index}"
    return None


def check_text(text: str, what: str, *, max_len: int = 1024, reason: str = "bad-text") -> str:
    """Printable, valid UTF-8 text of 1..max_len characters, or InvalidRequest naming `what`."""
    if not text or len(text) > max_len:
        raise InvalidRequest(f"{what} must be 1 to {max_len} characters", reason=reason)
    problem = bad_character(text)
    if problem is not None:
        raise InvalidRequest(f"{what} {_shown(text)} has {problem}", reason=reason)
    return text


def _shown(text: str) -> str:
    """A repr that is itself safe to print on one line (surrogates escaped)."""
    short = text if len(text) <= 60 else text[:60] + "..."
    return repr(short.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace"))


def check_hostname(text: str) -> str:
    """An RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens."""
    labels = text.split(".")
    if len(text) > 253 or not all(HOST_LABEL.fullmatch(label) for label in labels):
        raise InvalidRequest(
            f"--hostname {_shown(text)} is not a host name: labels of 1-63 letters, digits "
            "and '-' (not first or last), separated by '.', 253 characters at most",
            reason="bad-hostname",
        )
    return text


def check_cmdline(text: str) -> str:
    """A kernel command line: printable, one line, no longer than the kernel takes."""
    return check_text(text, "--cmdline", max_len=CMDLINE_MAX, reason="bad-cmdline")


def check_mac(text: str, what: str = "--nic mac") -> str:
    """aa:bb:cc:dd:ee:ff, unicast (the multicast bit of the first octet clear), not all zero."""
    if not MAC_RE.fullmatch(text):
        raise InvalidRequest(
            f"{what} {_shown(text)} is not a MAC address (six hex pairs with ':')",
            reason="bad-mac",
        )
    if int(text[:2], 16) & 1:
        raise InvalidRequest(f"{what} {text} is a multicast address", reason="bad-mac")
    if text.replace(":", "").strip("0") == "":
        raise InvalidRequest(f"{what} {text} is all zeros", reason="bad-mac")
    return text.lower()


def check_address(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidRequest(
            f"{what} {_shown(text)} is not an IPv4 or IPv6 address", reason="bad-address"
        ) from None


def check_interface(text: str, what: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """ADDRESS/PREFIX (or a bare address): a host address inside its network."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise InvalidRequest(
            f"{what} {_shown(text)} is not ADDRESS/PREFIX (e.g. 192.0.2.10/24 or 2001:db8::5/64)",
            reason="bad-address",
        ) from None
    net = iface.network
    if iface.version == 4 and net.prefixlen < 31 and iface.ip in (net[0], net[-1]):
        raise InvalidRequest(
            f"{what} {text} is the network or broadcast address of {net}, not a host in it",
            reason="bad-address",
        )
    return iface


def check_nic(values: Mapping[str, str]) -> None:
    """A `--nic`: its MAC, and an address with a gateway in its subnet, DNS and MTU in range."""
    check_mac(values["mac"])
    ip = values.get("ip", "dhcp")
    iface = None if ip == "dhcp" else check_interface(ip if "/" in ip else f"{ip}/24", "--nic ip")
    gateway = values.get("gateway")
    if gateway:
        if iface is None:
            raise InvalidRequest(
                "--nic gateway needs a static ip=ADDRESS/PREFIX (DHCP brings its own)",
                reason="bad-address",
            )
        gw = check_address(gateway, "--nic gateway")
        if gw.version != iface.version or gw not in iface.network or gw == iface.ip:
            raise InvalidRequest(
                f"--nic gateway {gateway} is not another host in {iface.network}",
                reason="bad-address",
            )
    if values.get("dns"):
        check_address(values["dns"], "--nic dns")
    if values.get("mtu"):
        mtu = int(values["mtu"])
        low = 1280 if iface is not None and iface.version == 6 else MTU_RANGE[0]
        if not low <= mtu <= MTU_RANGE[1]:
            raise InvalidRequest(
                f"--nic mtu {mtu} is outside {low}-{MTU_RANGE[1]}", reason="bad-option"
            )


def check_unique_macs(macs: list[str]) -> None:
    seen: set[str] = set()
    for mac in (m.lower() for m in macs):
        if mac in seen:
            raise InvalidRequest(f"two NICs have the MAC {mac}", reason="bad-mac")
        seen.add(mac)
