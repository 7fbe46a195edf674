"""User data checks: a `#cloud-config` document must be YAML that cloud-init can load.

cloud-init only finds out at the guest's first boot, logs a warning and boots without the
configuration (no user, no key): the mistake shows up minutes later as an ssh refusal. We parse
it with PyYAML's safe loader, as cloud-init does, and name the line.
"""

from __future__ import annotations

import yaml

from vmdisk.errors import InvalidRequest

CLOUD_CONFIG = b"#cloud-config"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def check_user_data(data: bytes, where: str = "user data") -> bytes:
    """Refuse a #cloud-config that is not YAML, or not a mapping; other user data passes."""
    if not data.startswith(CLOUD_CONFIG):
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidRequest(
            f"{where}: line {line}: #cloud-config is not UTF-8", reason="bad-user-data"
        ) from None
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise InvalidRequest(
            f"{where}: #cloud-config is not valid YAML: {_located(exc)}", reason="bad-user-data"
        ) from None
    if doc is not None and not isinstance(doc, dict):
        raise InvalidRequest(
            f"{where}: #cloud-config must be a mapping of keys (users:, packages:, ...), "
            f"not a {type(doc).__name__}",
            reason="bad-user-data",
        )
    return data


def _located(exc: yaml.YAMLError) -> str:
    """`line N, column M: <problem>` from PyYAML's marks (0-based there)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return str(problem)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
