"""Runs INSIDE the Debian test guest (tests/lvm/test_lvm_tier.py puts it there): vmdisk's LVM
backend against real lvm2 and device-mapper, on the volume group $VMDISK_TEST_VG (with a thin
pool "pool") that the harness made on an extra virtio disk. Checked with lvs, blkid, cmp."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import nested
import pytest

from vmdisk.backends.lvm import BASE_PREFIX, LvmBackend
from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import BlockSource, InstanceSpec
from vmdisk.settings import Flavor, Settings, load_settings

VG = os.environ.get("VMDISK_TEST_VG", "vg0")
#: The guest's own kernel, put there by the harness, for the nested boot.
KERNEL = os.environ.get("VMDISK_TEST_KERNEL", "/root/t/vmlinuz")
#: Where figures (the nested boot's time) go for the harness to print.
REPORT = Path(os.environ.get("VMDISK_TEST_REPORT", "/root/t/report.jsonl"))
FLAVOR = Flavor("lvm.t", 1, 256, 1, ephemeral_gb=1, swap_mb=64)
MiB = 1 << 20


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def lvs() -> dict[str, dict[str, str]]:
    out = sh("lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
             "-o", "lv_name,lv_size,origin,data_percent,pool_lv", VG)  # fmt: skip
    return {r["lv_name"]: r for r in json.loads(out)["report"][0]["lv"]}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("img")
    (d / "tree").mkdir()
    (d / "tree" / "marker.txt").write_text("lvm-root-marker\n")
    raw = d / "root.raw"
    sh("truncate", "-s", str(48 * MiB), str(raw))
    sh("mkfs.ext4", "-q", "-F", "-d", str(d / "tree"), str(raw))
    return raw


def host(tmp_path: Path, **libvirt: object) -> Host:
    settings = load_settings(None, env={}, overrides={"instances_path": str(tmp_path / "i")})
    lib = dataclasses.replace(
        settings.libvirt, images_type="lvm", images_volume_group=VG, virt_type="qemu", **libvirt
    )  # type: ignore[arg-type]
    return Host(dataclasses.replace(settings, libvirt=lib))


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a command; fail with its output (not just its exit code) if it fails. The test's
    own VMDISK_TEST_* variables are kept from it (vmdisk would read them as settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMDISK_")}
    out = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, env=env
    )
    assert out.returncode == 0, f"{argv[0]} exited {out.returncode}: {out.stdout}{out.stderr}"
    return out


def report(**figures: object) -> None:
    with open(REPORT, "a") as fh:
        fh.write(json.dumps(figures) + "\n")


def spec(name: str) -> InstanceSpec:
    return InstanceSpec(name, str(uuid.uuid4()), FLAVOR)


def device(inst_uuid: str, disk: str) -> Path:
    return Path("/dev") / VG / f"{inst_uuid}_{disk}"


def test_thick_instance_disks_are_volumes(tmp_path: Path, image: Path) -> None:
    h = host(tmp_path)
    inst = h.create_instance(spec("thick"), ImageRequest(str(image)))
    u = inst.record.uuid
    root = device(u, "disk")
    assert inst.record.disks[0].source == BlockSource(root)
    assert int(lvs()[root.name]["lv_size"]) == 1 << 30
    sh("cmp", "-n", str(image.stat().st_size), str(image), str(root))  # content equals the image
    size = image.stat().st_size
    rest = str((1 << 30) - size)
    sh("cmp", "-n", rest, "-i", f"{size}:0", str(root), "/dev/zero")  # past the image: zeros
    assert sh("blkid", "-o", "value", "-s", "LABEL", str(device(u, "disk.local"))) == "ephemeral0"
    assert sh("blkid", "-o", "value", "-s", "TYPE", str(device(u, "disk.swap"))) == "swap"
    xml = (inst.path / "libvirt.xml").read_text()
    assert f'<source dev="{root}"' in xml and 'type="block"' in xml and 'io="native"' in xml
    h.resize_instance("thick", 2, None)
    assert int(lvs()[root.name]["lv_size"]) == 2 << 30
    h.delete_instance("thick")
    assert not [n for n in lvs() if n.startswith(u)]


def test_volume_clear_zero_really_zeroes(tmp_path: Path, image: Path) -> None:
    h = host(tmp_path, volume_clear="zero")
    inst = h.create_instance(spec("clear"), ImageRequest(str(image)))
    eph = device(inst.record.uuid, "disk.local")
    with open(eph, "r+b") as fh:
        fh.write(b"\x5a" * MiB)
        os.fsync(fh.fileno())
    with h.provisioner.backend(inst.record.backend) as backend:
        assert isinstance(backend, LvmBackend)
        lv = backend.lvm.volume(VG, eph.name)
        assert lv is not None
        backend.clear(lv)
    with open(eph, "rb") as fh:
        assert fh.read(MiB) == bytes(MiB)  # read back before lvremove
    h.delete_instance("clear")


def test_thin_roots_are_linked_clones_of_one_base(tmp_path: Path, image: Path) -> None:
    h = host(tmp_path, images_thin_pool="pool")
    a = h.create_instance(spec("thin-a"), ImageRequest(str(image)))
    b = h.create_instance(spec("thin-b"), ImageRequest(str(image)))
    base = f"{BASE_PREFIX}{a.record.image_base}"
    volumes = lvs()
    for inst in (a, b):
        root = volumes[f"{inst.record.uuid}_disk"]
        assert root["origin"] == base and root["pool_lv"] == "pool"
        assert float(root["data_percent"] or 0) < 5.0  # shares the base's blocks
        sh(
            "cmp",
            "-n",
            str(image.stat().st_size),
            str(image),
            str(device(inst.record.uuid, "disk")),
        )
    h.delete_instance("thin-a")
    h.delete_instance("thin-b")
    assert not [n for n in lvs() if n.startswith((a.record.uuid, b.record.uuid))]


def test_cache_prune_keeps_base_volumes_with_snapshots(tmp_path: Path, image: Path) -> None:
    """`vmdisk cache prune` (ages 0) on a thin pool: the base LV stays while the instance's
    root, then a snapshot made by hand, is a snapshot of it (even once its _base file is
    gone); with none left, --dry-run plans its removal and prune removes it."""
    config = tmp_path / "vmdisk.toml"
    config.write_text(
        f'instances_path = "{tmp_path / "i"}"\n[libvirt]\nimages_type = "lvm"\n'
        f'images_volume_group = "{VG}"\nimages_thin_pool = "pool"\nvirt_type = "qemu"\n'
        "[image_cache]\nremove_unused_original_minimum_age_seconds = 0\n"
    )
    h = Host(load_settings(config, env={}))
    inst = h.create_instance(spec("prune"), ImageRequest(str(image)))
    entry = inst.record.image_base
    base, root = f"{BASE_PREFIX}{entry}", f"{inst.record.uuid}_disk"
    assert lvs()[root]["origin"] == base
    vmdisk = Path(sys.executable).with_name("vmdisk")

    def prune(*flags: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        out = json.loads(run(vmdisk, "--config", config, "--json", "cache", "prune", *flags).stdout)
        (decision,) = [v for v in out["plan"]["volumes"] if v["name"] == base]
        return decision, out["result"]

    decision, result = prune()
    assert decision["action"] == "keep" and root in str(decision["reason"]), decision
    assert result is not None and result["volumes"]["removed"] == [] and base in lvs()
    hand = f"hand_snap_{os.getpid()}"
    sh("lvcreate", "-q", "-y", "-s", "-kn", "-n", hand, f"{VG}/{base}")
    h.delete_instance("prune")
    decision, result = prune()
    assert result is not None and entry in result["removed"]  # the _base file went
    assert decision["action"] == "keep" and hand in str(decision["reason"]), decision
    assert base in lvs()
    sh("lvremove", "-q", "-y", f"{VG}/{hand}")
    decision, result = prune("--dry-run")
    assert decision["action"] == "remove" and result is None and base in lvs()
    started = time.monotonic()
    decision, result = prune()
    report(prune_base_volume_s=round(time.monotonic() - started, 1))
    assert result is not None and result["volumes"]["removed"] == [base], result
    assert base not in lvs()


def test_rescue_volume_comes_and_goes(tmp_path: Path, image: Path) -> None:
    h = host(tmp_path)
    inst = h.create_instance(spec("rescue"), ImageRequest(str(image)))
    h.rescue_instance("rescue", None)
    rescue = device(inst.record.uuid, "disk.rescue")
    assert rescue.name in lvs()
    assert f'<source dev="{rescue}"' in (inst.path / "libvirt.xml").read_text()
    h.unrescue_instance("rescue")
    assert rescue.name not in lvs()
    h.delete_instance("rescue")


def test_a_flavor_smaller_than_the_image_makes_no_volume(tmp_path: Path) -> None:
    big = tmp_path / "big.raw"
    sh("truncate", "-s", str(2 << 30), str(big))
    sh("mkfs.ext4", "-q", "-F", str(big))
    h = host(tmp_path)
    before = set(lvs())
    # Refused while the raw bytes stream in, or from the header: both name the root disk.
    with pytest.raises(Exception, match="the flavor's root disk"):
        h.create_instance(spec("small"), ImageRequest(str(big)))
    assert set(lvs()) == before


def test_settings_refuse_lvm_without_a_volume_group(tmp_path: Path) -> None:
    from vmdisk.errors import SettingsError

    with pytest.raises(SettingsError):
        load_settings(None, env={}, overrides={"instances_path": str(tmp_path),
                                               "libvirt": {"images_type": "lvm"}})  # fmt: skip
    assert isinstance(Settings, type)


MODES: dict[str, dict[str, object]] = {
    "thick": {},
    "sparse": {"sparse_logical_volumes": True},
    "thin": {"images_thin_pool": "pool"},
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_libvirt_xml_validates_with_block_disks(tmp_path: Path, image: Path, mode: str) -> None:
    h = host(tmp_path, **MODES[mode])
    before = set(lvs())
    inst = h.create_instance(spec(f"xml-{mode}"), ImageRequest(str(image)))
    u = inst.record.uuid
    xml = inst.path / "libvirt.xml"
    run("virt-xml-validate", xml, "domain")  # libvirt's own RelaxNG schema
    blocks = {}
    for el in ET.parse(xml).findall("./devices/disk"):
        source = el.find("source")
        if el.get("type") == "block" and source is not None:
            blocks[source.get("dev")] = el
    assert set(blocks) == {str(device(u, n)) for n in ("disk", "disk.local", "disk.swap")}
    for dev, el in blocks.items():
        assert el.get("device") == "disk"
        driver = el.find("driver")
        assert driver is not None
        assert driver.attrib == {"name": "qemu", "type": "raw", "cache": "none", "io": "native"}
        assert Path(dev).is_block_device()
    root = device(u, "disk")
    sh("cmp", "-n", str(image.stat().st_size), str(image), str(root))
    attr = lvs()[root.name]
    if mode == "thin":
        assert attr["pool_lv"] == "pool" and attr["origin"].startswith(BASE_PREFIX)
    elif mode == "sparse":  # 64 MiB of exception store over a virtual zero origin of 1 GiB
        assert int(attr["lv_size"]) == 64 * MiB and attr["origin"] == f"[{root.name}_vorigin]"
        assert sh("blockdev", "--getsize64", str(root)) == str(1 << 30)
    h.delete_instance(f"xml-{mode}")
    left = set(lvs()) - before
    assert left <= {f"{BASE_PREFIX}{inst.record.image_base}"}, left  # no lvolN pools left over


def test_a_booted_guest_sees_root_ephemeral_and_swap_on_the_volumes(
    tmp_path: Path, image: Path
) -> None:
    """`vmdisk boot --via qemu` (TCG inside this TCG guest) on a thin-clone instance: a busybox
    init in the nested guest reports what it finds on vda/vdb/vdc (tests/lvm/inguest/nested.py)."""
    config = tmp_path / "vmdisk.toml"
    config.write_text(
        f'instances_path = "{tmp_path / "i"}"\n[libvirt]\nimages_type = "lvm"\n'
        f'images_volume_group = "{VG}"\nimages_thin_pool = "pool"\nvirt_type = "qemu"\n'
    )
    h = Host(load_settings(config, env={}))
    inst = h.create_instance(spec("nested"), ImageRequest(str(image)))
    initrd = nested.build_initramfs(tmp_path / "init.cpio")
    kernel = nested.kernel_elf(Path(KERNEL), tmp_path / "vmlinux")
    vmdisk = Path(sys.executable).with_name("vmdisk")
    start = time.monotonic()
    out = run(vmdisk, "--config", config, "--json", "boot", "nested", "--via", "qemu",
              "--kernel", kernel, "--initrd", initrd, "--cmdline", nested.CMDLINE,
              "--timeout", "600")  # fmt: skip
    elapsed = time.monotonic() - start
    result = json.loads(out.stdout)
    report(nested_boot_s=round(elapsed, 1), reason=result["reason"])
    assert result["reason"] == "poweroff", result["console"][-2000:]
    seen = nested.between_markers(result["console"])
    assert seen.get("root") == "lvm-root-marker", result["console"][-2000:]
    assert seen.get("ephemeral") == "/dev/vdb"  # found by its label, ephemeral0
    assert seen.get("swap") == "partition"  # the kernel took vdc as swap
    sizes = dict(kv.split("=") for kv in seen["partitions"].split())  # KiB
    assert sizes == {"vda": str(1 << 20), "vdb": str(1 << 20), "vdc": str(64 << 10)}
    h.delete_instance(inst.record.uuid)
