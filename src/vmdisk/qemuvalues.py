"""The grammar of settings that end inside qemu's option strings (and libvirt's XML).

qemu reads `-drive file=rbd:POOL/IMAGE:conf=PATH:id=USER`: `:` separates rbd options, `@`
starts a snapshot name, `/` a namespace, and `,` a `-drive` option (boot.py doubles commas,
but nothing escapes a colon). So a pool `vms:mon_host=10.0.0.9` or a user `admin:keyring=/x`
would point qemu at another cluster or key. Each value is checked here, once, when the
settings are loaded; a ValueError becomes a SettingsError naming file and key.
"""

from __future__ import annotations

import re
import uuid

from vmdisk.validate import bad_character

#: Ceph pool and client names as vmdisk accepts them: what `ceph osd pool create` and
#: `ceph auth` take in practice, without qemu's separators.
CEPH_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
PATH_FORBIDDEN = frozenset(":,\\")


def ceph_name(text: str, what: str) -> str:
    if not CEPH_NAME.fullmatch(text):
        raise ValueError(
            f"{what} {text!r} must be 1-128 of A-Z a-z 0-9 _ . - (':' '@' '/' ',' would be "
            "read by qemu as options)"
        )
    return text


def option_path(text: str, what: str) -> str:
    """A file path qemu reads inside an option string: absolute, no ':' ',' '\\' or control."""
    if not text:
        return text
    problem = bad_character(text)
    if problem is not None:
        raise ValueError(f"{what} has {problem}")
    if not text.startswith("/") or PATH_FORBIDDEN & set(text):
        raise ValueError(f"{what} {text!r} must be an absolute path without ':', ',' or '\\'")
    return text


def secret_uuid(text: str) -> str:
    """libvirt's secret is named by a UUID (canonical form)."""
    try:
        value = uuid.UUID(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a UUID (libvirt names secrets by UUID)") from None
    if str(value) != text.lower():
        raise ValueError(f"{text!r} must be in canonical form {value}")
    return text
