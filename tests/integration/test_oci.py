"""OCI registries for real: Debian's docker-registry on 127.0.0.1, skopeo and tar as readers.

Round trip (push a base, pull it on another instances path: byte-identical, same image id),
idempotent push, tampered blobs, moved tags under a pinned digest, non-containerDisk layouts,
htpasswd auth, multi-arch indexes. Bad images are pushed with plain requests (not our client)
so the refusals are tested against layouts our own pusher would never make.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.images import MiB, qemu_info, run, sha256, vmdisk_argv
from tests.services import registry as registry_service
from tests.services.registry import Registry

pytestmark = pytest.mark.skipif(
    not registry_service.available(), reason="docker-registry is not installed"
)

PAYLOAD = os.urandom(3 * MiB) + bytes(4 * MiB) + os.urandom(MiB)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with registry_service.running(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def vmdisk(
    instances: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "DOCKER_CONFIG": str(instances / "no-docker"), **(env or {})}
    return subprocess.run(
        vmdisk_argv(instances, *args), capture_output=True, text=True, env=full, check=False
    )


def ok(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def refused(proc: subprocess.CompletedProcess[str], code: int) -> dict[str, Any]:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)["error"]  # type: ignore[no-any-return]


def cached_base(tmp_path: Path, name: str, payload: bytes) -> tuple[Path, str]:
    """An instances path holding one cached raw base made from `payload`; (path, image id)."""
    instances = tmp_path / name
    image = tmp_path / f"{name}.raw"
    image.write_bytes(payload)
    fetched = ok(vmdisk(instances, "image", "fetch", str(image), "--format", "raw"))
    return instances, fetched["image_id"]


def push(instances: Path, image_id: str, target: str, reg: Registry) -> dict[str, Any]:
    return ok(vmdisk(instances, "image", "push", image_id, target, "--insecure-registry",
                     reg.address))  # fmt: skip


def pull(instances: Path, ref: str, reg: Registry, *extra: str) -> subprocess.CompletedProcess[str]:
    return vmdisk(instances, "image", "fetch", ref, "--insecure-registry", reg.address, *extra)


def base_dir_files(instances: Path) -> list[str]:
    base = instances / "_base"
    return sorted(p.name for p in base.iterdir()) if base.exists() else []


# ---- pushing images by hand, for layouts our pusher never makes ----------------------------


def put_blob(reg: Registry, repo: str, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = requests.post(f"http://{reg.address}/v2/{repo}/blobs/uploads/", timeout=10)
    assert start.status_code == 202, start.text
    location = requests.compat.urljoin(f"http://{reg.address}/", start.headers["Location"])
    sep = "&" if "?" in location else "?"
    done = requests.put(f"{location}{sep}digest={digest}", data=data, timeout=30)
    assert done.status_code == 201, done.text
    return {"digest": digest, "size": len(data)}


def layer_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def put_image(
    reg: Registry, repo: str, tag: str, layers: list[dict[str, bytes]], level: int = 9
) -> str:
    """A gzip-layered OCI image from file maps; returns the manifest digest."""
    descs, diff_ids = [], []
    for files in layers:
        tar = layer_tar(files)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        blob = put_blob(reg, repo, gzip.compress(tar, level, mtime=0))
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob})
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **put_blob(reg, repo, config),
        },
        "layers": descs,
    }
    return put_manifest(reg, repo, tag, manifest)


def put_manifest(reg: Registry, repo: str, tag: str, manifest: dict[str, Any]) -> str:
    body = json.dumps(manifest).encode()
    media = manifest["mediaType"]
    answer = requests.put(
        f"http://{reg.address}/v2/{repo}/manifests/{tag}",
        data=body, headers={"Content-Type": media}, timeout=10,
    )  # fmt: skip
    assert answer.status_code == 201, answer.text
    return "sha256:" + hashlib.sha256(body).hexdigest()


# ---- the tests ---------------------------------------------------------------------------------


def test_round_trip_is_byte_identical_and_readable_by_skopeo_and_tar(
    registry: Registry, tmp_path: Path
) -> None:
    host_a, image_id = cached_base(tmp_path, "a", PAYLOAD)
    target = registry.url("vm/roundtrip:v1")
    pushed = push(host_a, image_id, target, registry)
    digest = pushed["digest"]
    assert pushed["skipped"] == [] and len(pushed["uploaded"]) == 2

    again = push(host_a, image_id, target, registry)  # idempotent: nothing re-uploaded
    assert again["digest"] == digest
    assert again["uploaded"] == [] and len(again["skipped"]) == 2
    assert [n for n in base_dir_files(host_a) if ".part-" in n] == []  # temporaries removed

    # An independent reader: skopeo sees one gzip layer and our annotations.
    docker_ref = f"docker://{registry.address}/vm/roundtrip:v1"
    raw = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", docker_ref).stdout)
    assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert [layer["mediaType"] for layer in raw["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ]
    assert raw["annotations"]["io.vmdisk.image.sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert json.loads(raw["annotations"]["io.vmdisk.intake.verdict"])["verdict"] == "accepted"
    info = json.loads(run("skopeo", "inspect", "--tls-verify=false", docker_ref).stdout)
    assert info["Digest"] == digest and info["Os"] == "linux"

    # skopeo copies it to a directory; tar (not Python) lists and unpacks the layer.
    copied = tmp_path / "skopeo-dir"
    run("skopeo", "copy", "--src-tls-verify=false", docker_ref, f"dir:{copied}")
    layer = copied / raw["layers"][0]["digest"].split(":", 1)[1]
    listing = run("tar", "-tvzf", layer, "--numeric-owner").stdout.splitlines()
    assert len(listing) == 2
    assert listing[0].startswith("dr-xr-xr-x 107/107") and listing[0].endswith(" disk/")
    assert listing[1].startswith("-r--r----- 107/107") and listing[1].endswith(" disk/disk.qcow2")
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    run("tar", "-xzf", layer, "-C", unpacked)
    disk = unpacked / "disk/disk.qcow2"
    assert qemu_info(disk, "qcow2")["virtual-size"] == len(PAYLOAD)
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", disk, tmp_path / "a.raw")

    # Pull on a second host: same id (the manifest digest), the very same raw bytes.
    host_b = tmp_path / "b"
    fetched = ok(pull(host_b, target, registry))
    assert fetched["image_id"] == digest
    assert fetched["detected_format"] == "qcow2" and fetched["format"] == "raw"
    assert sha256(Path(fetched["base"])) == hashlib.sha256(PAYLOAD).hexdigest()
    by_digest = ok(pull(host_b, registry.url(f"vm/roundtrip@{digest}"), registry))
    assert by_digest["cached"] and by_digest["base"] == fetched["base"]

    # An instance from the registry: its root disk's backing file is that base.
    created = ok(vmdisk(host_b, "create", "web", "--image", target, "--flavor", "m1.tiny",
                        "--insecure-registry", registry.address))  # fmt: skip
    root = Path(created["path"]) / "disk"
    assert qemu_info(root, "qcow2")["backing-filename"] == fetched["base"]


def test_tampered_blob_is_refused_by_digest(registry: Registry, tmp_path: Path) -> None:
    host_a, image_id = cached_base(tmp_path, "a", os.urandom(2 * MiB))
    digest = push(host_a, image_id, registry.url("vm/tampered:v1"), registry)["digest"]
    manifest = requests.get(
        f"http://{registry.address}/v2/vm/tampered/manifests/{digest}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10,
    ).json()  # fmt: skip
    blob = registry.blob_path(manifest["layers"][0]["digest"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte different, gzip still valid-looking
    blob.write_bytes(bytes(data))
    host_b = tmp_path / "b"
    error = refused(pull(host_b, registry.url("vm/tampered:v1"), registry), 4)
    assert (error["type"], error["reason"]) == ("ChecksumMismatch", "digest-mismatch"), error
    assert [n for n in base_dir_files(host_b) if ".part" in n or len(n) == 40] == []


def test_a_tampered_blob_that_still_inflates_is_refused(registry: Registry, tmp_path: Path) -> None:
    """Replace a layer by another valid gzip'd tar with a disk: only the digest can tell."""
    repo = "vm/swapped"
    disk = os.urandom(MiB)
    put_image(registry, repo, "v1", [{"disk/disk.img": disk}], level=0)
    manifest = requests.get(
        f"http://{registry.address}/v2/{repo}/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10,
    ).json()  # fmt: skip
    blob = registry.blob_path(manifest["layers"][0]["digest"])
    other = gzip.compress(layer_tar({"disk/disk.img": os.urandom(MiB)}), 0, mtime=0)
    assert len(other) == blob.stat().st_size  # stored deflate blocks: the sizes agree
    blob.write_bytes(other)
    host_b = tmp_path / "b"
    error = refused(pull(host_b, registry.url(f"{repo}:v1"), registry), 4)
    assert (error["type"], error["reason"]) == ("ChecksumMismatch", "digest-mismatch")
    assert "hashing to" in error["message"]
    assert [n for n in base_dir_files(host_b) if len(n) == 40] == []


def test_moved_tag_is_detected_when_pinned(registry: Registry, tmp_path: Path) -> None:
    host_a, first = cached_base(tmp_path, "a", os.urandom(MiB))
    target = registry.url("vm/moving:stable")
    d1 = push(host_a, first, target, registry)["digest"]
    host_c, second = cached_base(tmp_path, "c", os.urandom(MiB))
    d2 = push(host_c, second, target, registry)["digest"]
    assert d1 != d2
    host_b = tmp_path / "b"
    error = refused(pull(host_b, f"{target}@{d1}", registry), 4)
    assert error["reason"] == "digest-mismatch" and d2 in error["message"]
    assert ok(pull(host_b, registry.url(f"vm/moving@{d1}"), registry))["image_id"] == d1
    assert ok(pull(host_b, target, registry))["image_id"] == d2  # unpinned: the new one


@pytest.mark.parametrize(
    ("layers", "words"),
    [
        ([{"etc/hostname": b"x\n"}], "no file under /disk/"),
        ([{"disk/a.qcow2": os.urandom(4096), "disk/b.raw": os.urandom(4096)}], "two disks"),
        ([{"disk/a.raw": os.urandom(4096)}, {"disk/b.raw": os.urandom(4096)}], "two disks"),
    ],
    ids=["no-disk", "two-disks", "two-layers-two-disks"],
)
def test_not_a_container_disk_is_refused(
    registry: Registry, tmp_path: Path, layers: list[dict[str, bytes]], words: str
) -> None:
    put_image(registry, "vm/bad", "t", layers)
    host = tmp_path / "h"
    error = refused(pull(host, registry.url("vm/bad:t"), registry), 4)
    assert error["reason"] == "not-a-container-disk" and words in error["message"]
    assert [n for n in base_dir_files(host) if len(n) == 40] == []


def test_disk_behind_other_layers_and_raw_is_pulled(registry: Registry, tmp_path: Path) -> None:
    disk = os.urandom(MiB) + bytes(MiB)
    digest = put_image(
        registry, "vm/layered", "t",
        [{"etc/os-release": b"ID=1\n", "usr/big": os.urandom(3 * MiB)}, {"./disk/root.img": disk}],
    )  # fmt: skip
    fetched = ok(pull(tmp_path / "h", registry.url("vm/layered:t"), registry))
    assert fetched["image_id"] == digest and fetched["detected_format"] == "raw"
    assert sha256(Path(fetched["base"])) == hashlib.sha256(disk).hexdigest()


def test_hostile_disk_is_refused_by_the_intake(registry: Registry, tmp_path: Path) -> None:
    """The intake's checks run on what comes out of the tar: a qcow2 with a backing file."""
    evil = tmp_path / "evil.qcow2"
    run("qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", evil, "1M")
    put_image(registry, "vm/evil", "t", [{"disk/disk.qcow2": evil.read_bytes()}])
    error = refused(pull(tmp_path / "h", registry.url("vm/evil:t"), registry), 4)
    assert error["reason"] == "backing-file"


def test_other_disk_formats_are_refused(registry: Registry, tmp_path: Path) -> None:
    """The intake would take a vmdk; KubeVirt would not, so a containerDisk may not hold one."""
    vmdk = tmp_path / "d.vmdk"
    run("qemu-img", "create", "-f", "vmdk", vmdk, "1M")
    put_image(registry, "vm/vmdk", "t", [{"disk/d.vmdk": vmdk.read_bytes()}])
    error = refused(pull(tmp_path / "h", registry.url("vm/vmdk:t"), registry), 4)
    assert error["reason"] == "format-mismatch" and "qcow2 or raw" in error["message"]


def test_multi_arch_index_picks_the_platform(registry: Registry, tmp_path: Path) -> None:
    amd = os.urandom(MiB)
    arm = os.urandom(MiB)
    d_amd = put_image(registry, "vm/multi", "amd", [{"disk/d.img": amd}])
    d_arm = put_image(registry, "vm/multi", "arm", [{"disk/d.img": arm}])
    media = "application/vnd.oci.image.manifest.v1+json"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": media, "digest": d, "size": _manifest_size(registry, "vm/multi", d),
             "platform": {"os": "linux", "architecture": arch}}
            for d, arch in ((d_arm, "arm64"), (d_amd, "amd64"))
        ],
    }  # fmt: skip
    put_manifest(registry, "vm/multi", "both", index)
    ref = registry.url("vm/multi:both")
    got_arm = ok(pull(tmp_path / "h", ref, registry, "--platform", "linux/arm64"))
    assert got_arm["image_id"] == d_arm
    assert sha256(Path(got_arm["base"])) == hashlib.sha256(arm).hexdigest()
    if os.uname().machine == "x86_64":
        assert ok(pull(tmp_path / "h2", ref, registry))["image_id"] == d_amd
    error = refused(pull(tmp_path / "h3", ref, registry, "--platform", "linux/s390x"), 1)
    assert error["reason"] == "no-platform" and "linux/arm64" in error["message"]


def _manifest_size(reg: Registry, repo: str, digest: str) -> int:
    answer = requests.get(
        f"http://{reg.address}/v2/{repo}/manifests/{digest}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10,
    )  # fmt: skip
    return len(answer.content)


def test_plain_http_only_for_loopback_and_tls_is_verified(
    tmp_path: Path, registry: Registry
) -> None:
    host = tmp_path / "h"
    error = refused(pull(host, "oci://registry.example.org/vm/x:1", registry,
                         "--insecure-registry", "registry.example.org"), 2)  # fmt: skip
    assert error["reason"] == "insecure-registry"
    # Without --insecure-registry the loopback registry is spoken to over TLS, which it lacks.
    error = refused(vmdisk(host, "image", "fetch", registry.url("vm/roundtrip:v1")), 1)
    assert error["type"] == "RegistryError"
    assert "\n" not in error["message"]


def test_htpasswd_auth_push_and_pull(tmp_path: Path) -> None:
    with registry_service.running(tmp_path / "reg", username="alice", password="s3cret") as reg:
        host_a, image_id = cached_base(tmp_path, "a", os.urandom(MiB))
        target = reg.url("private/disk:1")
        # No credentials: one clear line, exit 1.
        proc = vmdisk(host_a, "image", "push", image_id, target, "--insecure-registry", reg.address)
        error = refused(proc, 1)
        assert error["reason"] == "auth-failed" and "anonymously" in error["message"]
        argv = [sys.executable, "-m", "vmdisk", "--instances-path", str(host_a), "image", "push",
                image_id, target, "--insecure-registry", reg.address]  # fmt: skip
        env_none = {**os.environ, "DOCKER_CONFIG": str(tmp_path / "none")}
        human = subprocess.run(argv, capture_output=True, text=True, check=False, env=env_none)
        assert human.returncode == 1
        lines = human.stderr.strip().splitlines()
        assert lines[0].startswith("vmdisk: error: authentication failed at registry")
        assert len([line for line in lines if not line.startswith("hint:")]) == 1

        # docker login's file: pushes and pulls work.
        docker = tmp_path / "docker"
        docker.mkdir()
        auth = base64.b64encode(b"alice:s3cret").decode()
        (docker / "config.json").write_text(json.dumps({"auths": {reg.address: {"auth": auth}}}))
        env = {"DOCKER_CONFIG": str(docker)}
        proc = vmdisk(host_a, "image", "push", image_id, target, "--insecure-registry",
                      reg.address, env=env)  # fmt: skip
        digest = ok(proc)["digest"]
        fetched = ok(vmdisk(tmp_path / "b", "image", "fetch", target, "--insecure-registry",
                            reg.address, env=env))  # fmt: skip
        assert fetched["image_id"] == digest

        # A wrong password from the settings (which win over the file): refused, one line.
        settings = {"VMDISK_OCI__CREDENTIALS": f"{reg.address}=alice:wrong"}
        proc = vmdisk(tmp_path / "c", "image", "fetch", target, "--insecure-registry",
                      reg.address, env={**env, **settings})  # fmt: skip
        error = refused(proc, 1)
        assert error["reason"] == "auth-failed" and "as alice" in error["message"]
        assert "wrong" not in proc.stdout + proc.stderr


def test_bearer_token_flow(tmp_path: Path) -> None:
    """WWW-Authenticate: Bearer → the token realm with basic credentials → a JWT the real
    registry verifies (signature, issuer, audience, granted actions)."""
    (tmp_path / "reg").mkdir()
    tokens = registry_service.TokenService(tmp_path / "reg", "bob", "hunter2")
    try:
        with registry_service.running(tmp_path / "reg", tokens=tokens) as reg:
            host_a, image_id = cached_base(tmp_path, "a", os.urandom(MiB))
            target = reg.url("team/disk:1")
            error = refused(vmdisk(host_a, "image", "push", image_id, target,
                                   "--insecure-registry", reg.address), 1)  # fmt: skip
            assert error["reason"] == "auth-failed" and "anonymously" in error["message"]

            creds = {"VMDISK_OCI__CREDENTIALS": f"{reg.address}=bob:hunter2"}
            proc = vmdisk(host_a, "image", "push", image_id, target, "--insecure-registry",
                          reg.address, env=creds)  # fmt: skip
            digest = ok(proc)["digest"]
            scopes = {q.get("scope") for q in tokens.requests}
            assert "repository:team/disk:pull,push" in scopes
            assert {q.get("service") for q in tokens.requests} == {"vmdisk-test-registry"}

            fetched = ok(vmdisk(tmp_path / "b", "image", "fetch", target, "--insecure-registry",
                                reg.address, env=creds))  # fmt: skip
            assert fetched["image_id"] == digest
            assert "repository:team/disk:pull" in {q.get("scope") for q in tokens.requests}

            wrong = {"VMDISK_OCI__CREDENTIALS": f"{reg.address}=bob:nope"}
            error = refused(vmdisk(tmp_path / "c", "image", "fetch", target,
                                   "--insecure-registry", reg.address, env=wrong), 1)  # fmt: skip
            assert error["reason"] == "auth-failed" and "as bob" in error["message"]
    finally:
        tokens.close()


class CuttingProxy:
    """A TCP forwarder to the registry that cuts the first connection after `after` bytes of
    answer: a download dropped in the middle of the layer."""

    def __init__(self, port: int, after: int) -> None:
        self.port, self.after, self.cuts = port, after, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answer: bool) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if answer and self.cuts == 0 and sent + len(data) > self.after:
                    self.cuts += 1
                    dst.sendall(data[: self.after - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the other pump; close() alone would not
            sock.close()

    def close(self) -> None:
        self.listener.close()


def test_a_cut_download_resumes(registry: Registry, tmp_path: Path) -> None:
    disk = os.urandom(4 * MiB)
    digest = put_image(registry, "vm/cut", "t", [{"disk/d.img": disk}], level=0)
    # Past the first MiB read of the layer, so the intake has bytes and resumes.
    proxy = CuttingProxy(int(registry.address.split(":")[1]), after=5 * MiB // 2)
    try:
        ref = f"oci://{proxy.address}/vm/cut:t"
        proc = vmdisk(tmp_path / "h", "image", "fetch", ref, "--insecure-registry", proxy.address)
        fetched = ok(proc)
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert fetched["image_id"] == digest
    assert sha256(Path(fetched["base"])) == hashlib.sha256(disk).hexdigest()


def test_tls_is_verified_and_a_private_ca_can_be_named(tmp_path: Path) -> None:
    workdir = tmp_path / "reg"
    workdir.mkdir()
    tls = registry_service.self_signed_cert(workdir)
    with registry_service.running(workdir, tls=tls) as reg:
        host_a, image_id = cached_base(tmp_path, "a", os.urandom(MiB))
        target = reg.url("tls/disk:1")
        error = refused(vmdisk(host_a, "image", "push", image_id, target), 1)
        assert (error["type"], error["reason"]) == ("RegistryError", "tls-failed")
        assert "TLS verification failed for 127.0.0.1" in error["message"]
        ca = {"VMDISK_OCI__CAFILE": str(tls[0])}
        digest = ok(vmdisk(host_a, "image", "push", image_id, target, env=ca))["digest"]
        fetched = ok(vmdisk(tmp_path / "b", "image", "fetch", target, env=ca))
        assert fetched["image_id"] == digest
