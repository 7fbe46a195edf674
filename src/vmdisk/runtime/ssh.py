"""ssh into a guest with the key given at create, checking the host key the guest printed.

cloud-init prints the guest's new host keys to the console at its final stage, between
`-----BEGIN SSH HOST KEY KEYS-----` and `-----END SSH HOST KEY KEYS-----`; console.log keeps
them. They become `known_hosts` in the instance directory under the alias `vmdisk-<uuid>`, so
ssh checks the guest whatever address or port it is reached on (StrictHostKeyChecking=yes).
A console is only as trustworthy as the guest that wrote it: this proves the guest we talk to
is the one that booted, as Nova's console-log check does. `--insecure` skips the check.

ssh.json remembers who to log in as: the public keys given at create (`--ssh-key`, their
private halves next to them without `.pub`) and the user (`--ssh-user`, or the one the image's
cloud-init names when it refuses root: "Please login as the user ...").
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmdisk.fsutil import write_atomic

ACCESS_FILE = "ssh.json"
KNOWN_HOSTS = "known_hosts"
BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
END = "-----END SSH HOST KEY KEYS-----"
HOST_KEY = re.compile(
    r"(ssh-ed25519|ecdsa-sha2-nistp(?:256|384|521)|ssh-rsa)\s+([A-Za-z0-9+/]+={0,3})(?:\s|$)"
)
LOGIN_AS = re.compile(r'Please login as the user "([a-z_][a-z0-9_-]{0,31})"')


@dataclass(frozen=True, slots=True)
class SshAccess:
    user: str | None = None  # None: root, until the image says otherwise
    public_keys: tuple[str, ...] = field(default=())

    @property
    def identities(self) -> list[Path]:
        """Private keys next to the public ones given at create (`key.pub` -> `key`)."""
        found = []
        for text in self.public_keys:
            pub = Path(text)
            private = pub.with_suffix("") if pub.suffix == ".pub" else None
            if private is not None and private.is_file():
                found.append(private)
        return found

    def save(self, directory: Path) -> None:
        data = {"user": self.user, "public_keys": list(self.public_keys)}
        write_atomic(directory / ACCESS_FILE, json.dumps(data, indent=1).encode(), mode=0o600)

    @classmethod
    def load(cls, directory: Path) -> SshAccess:
        try:
            data = json.loads((directory / ACCESS_FILE).read_text())
            return cls(data.get("user"), tuple(str(k) for k in data.get("public_keys", ())))
        except (FileNotFoundError, ValueError, AttributeError):
            return cls()


def host_keys(console: str) -> list[str]:
    """The host keys of the last block cloud-init printed ("type base64"), or []."""
    end = console.rfind(END)
    begin = console.rfind(BEGIN, 0, end) if end >= 0 else -1
    if begin < 0:
        return []
    keys = []
    for line in console[begin + len(BEGIN) : end].splitlines():
        match = HOST_KEY.search(line)
        if match:
            keys.append(f"{match.group(1)} {match.group(2)}")
    return keys


def write_known_hosts(directory: Path, alias: str, keys: Sequence[str]) -> Path:
    path = directory / KNOWN_HOSTS
    write_atomic(path, "".join(f"{alias} {key}\n" for key in keys).encode(), mode=0o600)
    return path


def host_alias(uuid: str) -> str:
    return f"vmdisk-{uuid}"


def ssh_argv(
    host: str,
    port: int,
    user: str,
    *,
    identities: Sequence[Path],
    known_hosts: Path | None,
    alias: str,
    command: Sequence[str] = (),
    connect_timeout: int = 10,
) -> list[str]:
    """The ssh command line; `known_hosts` None means --insecure (no host key check)."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}"]
    argv += ["-o", "LogLevel=ERROR", "-p", str(port)]
    if known_hosts is None:
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    else:
        argv += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}"]
        argv += ["-o", f"HostKeyAlias={alias}"]
    for identity in identities:
        argv += ["-i", str(identity)]
    if identities:
        argv += ["-o", "IdentitiesOnly=yes"]
    argv += [f"{user}@{host}"]
    if command:
        argv += ["--", *command]
    return argv


def login_user(output: str) -> str | None:
    """The user an image's cloud-init wants instead of root, from its refusal message."""
    match = LOGIN_AS.search(output)
    return match.group(1) if match else None
