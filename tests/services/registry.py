"""A real OCI registry for the tests: Debian's `docker-registry` (the CNCF distribution server).

Each registry gets its own config, a filesystem storage directory and a free port on 127.0.0.1,
optionally htpasswd auth (bcrypt, made with apache2-utils' `htpasswd -B`) or token auth. It is
stopped by the pid we started, never by name.

Token auth needs a token service, which Debian does not package: `TokenService` is a minimal
one written for the tests (basic credentials in, an RS256 JWT with an x5c header out, as the
distribution token spec says). The registry's checks of those tokens — signature against
`rootcertbundle`, issuer, audience, expiry, granted actions — are the real server's.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

CONFIG = """version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  cache:
    blobdescriptor: ""
http:
  addr: 127.0.0.1:{port}
  secret: vmdisk-test-only
{tls}{auth}"""

TLS = """  tls:
    certificate: {cert}
    key: {key}
"""

TOKEN_AUTH = """auth:
  token:
    realm: {realm}
    service: vmdisk-test-registry
    issuer: vmdisk-test-issuer
    rootcertbundle: {cert}
"""

AUTH = """auth:
  htpasswd:
    realm: vmdisk-test
    path: {htpasswd}
"""


@dataclass(frozen=True)
class Registry:
    address: str  # 127.0.0.1:PORT
    storage: Path
    pid: int
    username: str | None = None
    password: str | None = None

    def url(self, repo: str) -> str:
        return f"oci://{self.address}/{repo}"

    def blob_path(self, digest: str) -> Path:
        """Where distribution keeps a blob: docker/registry/v2/blobs/sha256/ab/abcd.../data."""
        hexdigest = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


def available() -> bool:
    return shutil.which("docker-registry") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TokenService:
    """Issues registry tokens for one user; counts what it was asked (tests assert on it)."""

    def __init__(self, workdir: Path, username: str, password: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmdisk-test-token")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.cert_pem = workdir / "token-cert.pem"
        self.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.username = username
        self.requests: list[dict[str, str]] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                outer.requests.append(query)
                if self.headers.get("Authorization") != outer.expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": outer.token(query.get("scope", ""))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def token(self, scope: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        if scope.count(":") == 2:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": "vmdisk-test-issuer", "sub": self.username, "aud": "vmdisk-test-registry",
            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(),
            "access": access,
        }  # fmt: skip
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{_b64(signature)}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def self_signed_cert(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (IP SAN) and its key: the registry's own private CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = workdir / "tls-cert.pem", workdir / "tls-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@contextmanager
def running(
    workdir: Path,
    *,
    username: str | None = None,
    password: str | None = None,
    tokens: TokenService | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[Registry]:
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    auth = ""
    if username is not None and password is not None:
        htpasswd = workdir / "htpasswd"
        subprocess.run(
            ["htpasswd", "-B", "-b", "-c", str(htpasswd), username, password],
            check=True, capture_output=True,
        )  # fmt: skip
        auth = AUTH.format(htpasswd=htpasswd)
    if tokens is not None:
        auth = TOKEN_AUTH.format(realm=tokens.realm, cert=tokens.cert_pem)
    port = _free_port()
    config = workdir / "config.yml"
    tls_conf = TLS.format(cert=tls[0], key=tls[1]) if tls else ""
    config.write_text(CONFIG.format(storage=storage, port=port, auth=auth, tls=tls_conf))
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_up(f"{'https' if tls else 'http'}://127.0.0.1:{port}/v2/", proc, workdir, tls)
        yield Registry(f"127.0.0.1:{port}", storage, proc.pid, username, password)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _wait_up(
    url: str, proc: subprocess.Popen[bytes], workdir: Path, tls: tuple[Path, Path] | None
) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (workdir / "registry.log").read_text()[-2000:]
            raise RuntimeError(f"docker-registry exited {proc.returncode}: {tail}")
        try:
            requests.get(url, timeout=1, verify=str(tls[0]) if tls else True)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError("docker-registry did not answer within 20 s")
