"""Proof that the cached Debian image boots under TCG, takes a NoCloud seed and answers ssh."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.guests import debian

pytestmark = [pytest.mark.guest, pytest.mark.timeout(1800)]


def test_debian_guest_boots_answers_ssh_and_powers_off(tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    start = time.monotonic()
    image = debian.get_image()
    timings["image"] = time.monotonic() - start

    key, public = debian.make_keypair(tmp_path)
    seed = debian.make_seed_iso(
        tmp_path / "seed.iso",
        instance_id="iid-vmdisk-proof",
        hostname="vmdisk-proof",
        ssh_public_key=public,
    )
    disk = debian.make_overlay(image, tmp_path / "root.qcow2", size="4G")
    guest = debian.boot(image, tmp_path / "vm", disk=disk, seed=seed, memory_mb=1024)
    try:
        timings["boot_to_ssh"] = guest.wait_for_ssh(key)

        assert guest.ssh(key, "cat /etc/hostname").stdout.strip() == "vmdisk-proof"
        lsmod = guest.ssh(key, "modprobe dm-thin-pool && lsmod | grep dm_thin").stdout
        assert "dm_thin_pool" in lsmod
        assert "LVM version" in guest.ssh(key, "lvm version").stdout

        # sshd answers before cloud-init's final stage prints the host keys to the console.
        status = guest.ssh(key, "cloud-init status --wait", timeout=300).stdout
        assert "status: done" in status
        timings["cloud_init_done"] = time.monotonic() - guest.started

        stop = time.monotonic()
        guest.ssh(key, "poweroff", check=False)  # the connection may drop before it returns
        assert guest.wait_exit(timeout=180) == 0
        timings["poweroff"] = time.monotonic() - stop
    finally:
        guest.kill()
    console = guest.console.read_text(errors="replace")
    assert "BEGIN SSH HOST KEY FINGERPRINTS" in console
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
