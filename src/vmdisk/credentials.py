"""Credentials in what users type (URLs with user:password, tokens in the query) never stored.

A source such as `https://alice:pw@host/img?token=abc` or a presigned object-store URL is
needed to download once; what is kept (the instance record, the image id, libvirt.xml, logs)
is the same text with the user information and each secret-looking query value masked.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
#: Query parameters that carry credentials: OAuth, S3/GCS/Azure presigned URLs, API keys.
SECRET_PARAM = re.compile(
    r"(access_?token|token|auth|authorization|api_?key|key|password|passwd|pass|secret"
    r"|signature|sig|x-amz-(signature|credential|security-token)"
    r"|x-goog-(signature|credential)|credential|session)",
    re.IGNORECASE,
)


def _secret_param(name: str) -> bool:
    return bool(SECRET_PARAM.fullmatch(name))


def has_credentials(text: str) -> bool:
    """Whether a source carries user information or a secret query parameter."""
    return strip_credentials(text) != text


def strip_credentials(text: str) -> str:
    """`scheme://****@host/path?token=***`; anything that is not a URL with a host is as given."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if not parts.scheme or not parts.netloc:
        return text
    netloc = parts.netloc
    if "@" in netloc:
        host = netloc.rpartition("@")[2]
        netloc = f"****@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret_param(k) for k, _ in pairs):
            masked = [(k, MASK if _secret_param(k) else v) for k, v in pairs]
            query = urlencode(masked, safe="*/:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def token_free_id(source: str) -> str | None:
    """The default image id of a URL whose query holds a secret: without user information
    (as the normalised id always is) and with the secret values masked, so the id that lands
    in libvirt.xml and the records holds no token, and a new presigned URL of the same image
    finds the same cache entry. None when the query holds no secret."""
    try:
        parts = urlsplit(source)
    except ValueError:
        return None  # not a URL: the source's own parser says why
    if not parts.query or not any(_secret_param(k) for k, _ in parse_qsl(parts.query)):
        return None
    host = parts.netloc.rpartition("@")[2].lower()
    masked = strip_credentials(urlunsplit(("x", "h", "", parts.query, "")))
    return urlunsplit((parts.scheme.lower(), host, parts.path or "/", urlsplit(masked).query, ""))
