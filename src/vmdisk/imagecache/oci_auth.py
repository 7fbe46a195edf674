"""Registry credentials and challenges: docker's config.json, `[oci] credentials`, WWW-Authenticate.

Only inline `auth` entries of the docker config are read; credential helpers (`credsStore`,
`credHelpers`) would mean running programs a file names, which vmdisk does not.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vmdisk.errors import SettingsError


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def docker_config_path(env: Mapping[str, str]) -> Path:
    """`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` (where `docker login` writes)."""
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    return Path.home() / ".docker" / "config.json"


def load_credentials(
    configured: Mapping[str, Credentials], auth_file: Path | None
) -> dict[str, Credentials]:
    """Registry -> credentials: the settings' entries win over the docker config file's.

    Only inline `auth` (base64 user:password) entries are read; credential helpers
    (`credsStore`, `credHelpers`) would mean running programs named by a file, which we do not.
    """
    found: dict[str, Credentials] = {}
    if auth_file is not None and auth_file.is_file():
        try:
            data = json.loads(auth_file.read_text())
            auths = data.get("auths") or {}
        except (OSError, ValueError, AttributeError) as exc:
            raise SettingsError(f"{auth_file}: not a readable docker config: {exc}") from exc
        for key, entry in auths.items():
            user, password = _decode_auth(entry)
            if user:
                found[_auth_key(key)] = Credentials(user, password)
    found.update(configured)
    return found


def _decode_auth(entry: Any) -> tuple[str, str]:
    if not isinstance(entry, dict):
        return "", ""
    if entry.get("auth"):
        try:
            text = base64.b64decode(entry["auth"]).decode()
        except (ValueError, UnicodeDecodeError):
            return "", ""
        user, _, password = text.partition(":")
        return user, password
    return str(entry.get("username") or ""), str(entry.get("password") or "")


def _auth_key(key: str) -> str:
    """docker config keys may be URLs (`https://index.docker.io/v1/`): keep host[:port]."""
    host = urlsplit(key).netloc if "//" in key else key.split("/", 1)[0]
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host.lower()


def parse_credentials(entries: tuple[str, ...]) -> dict[str, Credentials]:
    """`[oci] credentials = ["REGISTRY=USER:PASSWORD", ...]`."""
    result: dict[str, Credentials] = {}
    for entry in entries:
        registry, eq, userpass = entry.partition("=")
        user, colon, password = userpass.partition(":")
        if not eq or not colon or not registry or not user:
            raise SettingsError("[oci] credentials entries must be 'REGISTRY=USER:PASSWORD'")
        result[registry.lower()] = Credentials(user, password)
    return result


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "basic" or "bearer"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """`Bearer realm="https://auth/token",service="registry",scope="repository:x:pull"`."""
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'([A-Za-z_]+)="([^"]*)"', rest))
    if scheme.lower() not in ("basic", "bearer"):
        return None
    return Challenge(scheme.lower(), params)


def basic_auth(creds: Credentials) -> str:
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    return f"Basic {token}"


def env_auth_file(configured: str) -> Path:
    return Path(configured).expanduser() if configured else docker_config_path(os.environ)
