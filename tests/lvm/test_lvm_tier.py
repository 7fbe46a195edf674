"""The LVM tier: boot the Debian test guest under TCG with an extra virtio disk as the PV,
install vmdisk's own wheel there, make a volume group with a thin pool, run tests/lvm/inguest
with pytest inside, and fail unless every test passed. The host kernel has no device-mapper;
the guest's (the host's Debian kernel, booted) does.

VMDISK_LVM_RUN picks what runs in the guest: `tests` (the default, `make test-lvm`), `bench`
(`make bench-lvm`: bench/lvm.py, its JSON printed and written to $VMDISK_LVM_BENCH_OUT if set)
or `both`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.guests import debian

pytestmark = [pytest.mark.guest, pytest.mark.timeout(2400)]
ROOT = Path(__file__).resolve().parents[2]
PV_SIZE = "8G"
RUN = os.environ.get("VMDISK_LVM_RUN", "tests")


def wheelhouse(cache: Path) -> Path:
    """vmdisk's wheel and its dependencies' (and pytest's), for an offline pip in the guest;
    the dependencies are cached by pyproject.toml's hash, vmdisk's wheel is built every run."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    deps = cache / f"wheels-{key}"
    pip = [sys.executable, "-m", "pip", "-q"]
    if not deps.is_dir():
        tmp = cache / f"wheels-{key}.part"
        subprocess.run([*pip, "wheel", "-w", str(tmp), str(ROOT), "pytest"], check=True)
        for own in tmp.glob("vmdisk-*.whl"):
            own.unlink()
        tmp.rename(deps)
    own = cache / "wheels-vmdisk"
    subprocess.run(["rm", "-rf", str(own)], check=True)
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(own), str(ROOT)], check=True)
    return deps


def _tar(paths: dict[str, Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, path in paths.items():
            tar.add(path, arcname=name)
    return buf.getvalue()


def test_lvm_backend_on_real_device_mapper(tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    start = time.monotonic()
    image = debian.get_image()
    cache = debian.cache_dir()
    deps = wheelhouse(cache)
    timings["image+wheels"] = time.monotonic() - start
    key, public = debian.make_keypair(tmp_path)
    seed = debian.make_seed_iso(
        tmp_path / "seed.iso", instance_id="iid-lvm", hostname="vmdisk-lvm", ssh_public_key=public
    )
    pv = tmp_path / "pv.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(pv), PV_SIZE], check=True)
    disk = debian.make_overlay(image, tmp_path / "root.qcow2", size="6G")
    extra = ["-drive", f"file={pv},if=virtio,format=qcow2,cache=unsafe"]
    guest = debian.boot(image, tmp_path / "vm", disk=disk, seed=seed, memory_mb=1536, cpus=1,
                        extra=extra)  # fmt: skip
    try:
        timings["boot_to_ssh"] = guest.wait_for_ssh(key)
        payload = _tar({
            "wheels": deps,
            "own": cache / "wheels-vmdisk",
            "inguest": ROOT / "tests" / "lvm" / "inguest",
            "bench_lvm.py": ROOT / "bench" / "lvm.py",
            "vmlinuz": image.kernel,  # the nested guest boots the same kernel
        })  # fmt: skip
        argv = ["ssh", *debian.SSH_OPTIONS, "-i", str(key), "-p", str(guest.port), "root@127.0.0.1"]
        subprocess.run([*argv, "mkdir -p /root/t && tar -xf - -C /root/t"], input=payload,
                       check=True, timeout=300)  # fmt: skip
        t = time.monotonic()
        # --no-compile: byte-compiling every dependency under TCG is most of the install.
        guest.ssh(key, "python3 -m venv /root/v && /root/v/bin/pip install -q --no-compile "
                  "--no-index --find-links /root/t/wheels --find-links /root/t/own vmdisk pytest",
                  timeout=900)  # fmt: skip
        timings["install"] = time.monotonic() - t
        # The PV is the one 8 GiB disk (vda is the root, vdb the seed).
        find_pv = "lsblk -dnbo NAME,SIZE | awk '$2 == 8589934592 {print \"/dev/\" $1}'"
        guest.ssh(
            key,
            f"set -e; pv=$({find_pv}); pvcreate -q $pv; "
            "vgcreate -q vg0 $pv; lvcreate -q -y -T -L 3G vg0/pool",
            timeout=300,
        )
        if RUN in ("tests", "both"):
            t = time.monotonic()
            _run_tests(guest, key)
            timings["tests"] = time.monotonic() - t
        if RUN in ("bench", "both"):
            t = time.monotonic()
            _run_bench(guest, key)
            timings["bench"] = time.monotonic() - t
        guest.powerdown()
        guest.wait_exit(timeout=180)
    finally:
        guest.kill()
        timings["total"] = time.monotonic() - start
        print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))


def _run_tests(guest: debian.RunningGuest, key: Path) -> None:
    result = guest.ssh(
        key,
        "cd /root/t && VMDISK_TEST_VG=vg0 VMDISK_TEST_KERNEL=/root/t/vmlinuz "
        "VMDISK_TEST_REPORT=/root/t/report.jsonl /root/v/bin/pytest -q -p no:cacheprovider "
        "--durations=0 inguest 2>&1 | tee /dev/console; exit ${PIPESTATUS[0]}",
        timeout=1500,
        check=False,
    )
    print(result.stdout[-4000:])
    figures = guest.ssh(key, "cat /root/t/report.jsonl 2>/dev/null", check=False).stdout
    for line in figures.splitlines():
        print(f"in-guest figures: {line}")
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def _run_bench(guest: debian.RunningGuest, key: Path) -> None:
    result = guest.ssh(
        key, "/root/v/bin/python /root/t/bench_lvm.py --vg vg0 --pool pool", timeout=1200
    )
    print(result.stderr)
    data = json.loads(result.stdout)
    print(json.dumps(data, indent=2))
    out = os.environ.get("VMDISK_LVM_BENCH_OUT")
    if out:
        Path(out).write_text(json.dumps(data, indent=2) + "\n")
