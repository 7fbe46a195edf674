"""Instance disks with real qemu-img, mkfs and mkswap, checked by independent readers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from tests.images import (
    MiB,
    blkid,
    convert,
    ext4_image,
    qcow2_pointing_at,
    qemu_info,
    run,
    sha256,
    vmdisk_argv,
)
from vmdisk.errors import FlavorDiskSmallerThanImage, InstanceExists, InvalidRequest
from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import BackendName, InstanceSpec
from vmdisk.settings import Flavor, Settings
from vmdisk.units import GiB

UUID = "6f1b8d52-3c11-4d4e-9a43-0c2f1e1f4a10"
FLAVOR = Flavor("t1", 1, 256, 1, ephemeral_gb=1, swap_mb=64)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("img")
    raw = ext4_image(d / "root.raw", {"marker.txt": b"vmdisk-marker\n"}, size=48 * MiB)
    return convert(raw, "raw", d / "root.qcow2", "qcow2")


@pytest.fixture
def host(settings: Settings) -> Host:
    return Host(settings)


def spec(name: str = "vm1", **kw: object) -> InstanceSpec:
    return dataclasses.replace(InstanceSpec(name, UUID, FLAVOR), **kw)  # type: ignore[arg-type]


def test_qcow2_instance_layout(host: Host, image: Path) -> None:
    inst = host.create_instance(spec(), ImageRequest(str(image)))
    d = inst.path
    assert d == host.settings.instances_path / UUID
    assert sorted(p.name for p in d.iterdir()) == [
        "console.log",
        "disk",
        "disk.info",
        "disk.local",
        "disk.swap",
        "instance.json",
        "libvirt.xml",
    ]
    base = host.settings.base_dir / inst.record.image_base
    root = qemu_info(d / "disk", "qcow2")
    assert root["format"] == "qcow2" and root["virtual-size"] == GiB
    assert root["backing-filename"] == str(base)
    assert root["backing-filename-format"] == "raw"
    run("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", d / "disk", image)
    local = qemu_info(d / "disk.local", "qcow2")
    assert Path(local["backing-filename"]).name.startswith("ephemeral_1_")
    assert local["backing-filename-format"] == "raw"
    assert {"LABEL": "ephemeral0", "TYPE": "ext4"}.items() <= blkid(
        Path(local["backing-filename"])
    ).items()
    swap = qemu_info(d / "disk.swap", "qcow2")
    assert Path(swap["backing-filename"]).name == "swap_64"
    assert blkid(Path(swap["backing-filename"]))["TYPE"] == "swap"
    assert json.loads((d / "disk.info").read_text()) == {
        str(d / "disk"): "qcow2",
        str(d / "disk.local"): "qcow2",
        str(d / "disk.swap"): "qcow2",
    }
    assert (d / "disk.info").read_text().count("\n") == 1
    assert (d / "console.log").stat().st_size == 0
    assert not list(host.settings.instances_path.glob(".building-*"))


def test_flat_instance_is_a_raw_copy(host: Host, image: Path, tmp_path: Path) -> None:
    inst = host.create_instance(spec(backend=BackendName.FLAT), ImageRequest(str(image)))
    d = inst.path
    root = qemu_info(d / "disk", "raw")
    assert root["virtual-size"] == GiB and "backing-filename" not in root
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", d / "disk", image)
    local = blkid(d / "disk.local")
    assert (local["LABEL"], local["TYPE"]) == ("ephemeral0", "ext4")
    assert blkid(d / "disk.swap")["TYPE"] == "swap"
    assert set(json.loads((d / "disk.info").read_text()).values()) == {"raw"}
    assert sorted(p.name for p in host.settings.base_dir.iterdir() if "ephemeral" in p.name) == []


def test_root_gb_zero_takes_the_image_size(host: Host, image: Path) -> None:
    inst = host.create_instance(spec(flavor=Flavor("z", 1, 1, 0)), ImageRequest(str(image)))
    assert qemu_info(inst.path / "disk", "qcow2")["virtual-size"] == 48 * MiB


def test_too_small_flavor_leaves_nothing(host: Host, tmp_path: Path) -> None:
    big = tmp_path / "big.raw"
    with open(big, "wb") as fh:
        fh.write(b"\x01" * 4096)
        fh.truncate(2 * GiB)
    with pytest.raises(FlavorDiskSmallerThanImage) as err:
        host.create_instance(spec(), ImageRequest(str(big)))
    assert err.value.exit_code == 1
    leftovers = [p.name for p in host.settings.instances_path.iterdir()]
    assert sorted(leftovers) == [".names", "_base", "locks"]
    assert list((host.settings.instances_path / ".names").iterdir()) == []  # name released
    assert host.instances() == []


def test_extra_ephemerals_get_their_own_labels(host: Host, image: Path) -> None:
    inst = host.create_instance(spec(ephemerals=(1, 2)), ImageRequest(str(image)))
    for name, label, size in (
        ("disk.eph0", "ephemeral0", GiB),
        ("disk.eph1", "ephemeral1", 2 * GiB),
    ):
        info = qemu_info(inst.path / name, "qcow2")
        assert info["virtual-size"] == size
        assert blkid(Path(info["backing-filename"]))["LABEL"] == label
    assert not (inst.path / "disk.local").exists()


def test_preallocation_reserves_space(settings: Settings, image: Path) -> None:
    host = Host(dataclasses.replace(settings, preallocate_images="space"))
    inst = host.create_instance(spec(backend=BackendName.FLAT), ImageRequest(str(image)))
    for name, size in (("disk", GiB), ("disk.local", GiB), ("disk.swap", 64 * MiB)):
        st = (inst.path / name).stat()
        assert st.st_blocks * 512 >= size, name
        assert st.st_size == size
    assert inst.record.preallocate is True


def test_resize_grows_and_refuses_to_shrink(host: Host, image: Path) -> None:
    host.create_instance(spec(), ImageRequest(str(image)))
    grown = host.resize_instance("vm1", 3, 2)
    assert qemu_info(grown.path / "disk", "qcow2")["virtual-size"] == 3 * GiB
    assert qemu_info(grown.path / "disk.local", "qcow2")["virtual-size"] == 2 * GiB
    assert grown.record.flavor.root_gb == 3
    with pytest.raises(InvalidRequest) as err:
        host.resize_instance("vm1", 2, None)
    assert err.value.reason == "shrink-refused"
    assert qemu_info(grown.path / "disk", "qcow2")["virtual-size"] == 3 * GiB


def test_resize_pins_format_even_if_the_guest_wrote_a_qcow2_header(
    host: Host, image: Path, tmp_path: Path
) -> None:
    inst = host.create_instance(spec(backend=BackendName.FLAT), ImageRequest(str(image)))
    evil = tmp_path / "evil.qcow2"
    qcow2_pointing_at(evil, "/etc/shadow")
    header = evil.read_bytes()[:4096]
    with open(inst.path / "disk", "r+b") as fh:  # what a guest can do to its own raw disk
        fh.write(header)
    host.resize_instance("vm1", 2, None)
    assert qemu_info(inst.path / "disk", "raw")["virtual-size"] == 2 * GiB
    with open(inst.path / "disk", "rb") as fh:
        assert fh.read(4096) == header


def test_rescue_and_unrescue(host: Host, image: Path) -> None:
    inst = host.create_instance(spec(), ImageRequest(str(image)))
    before = sha256(inst.path / "disk")
    rescued = host.rescue_instance("vm1", None)
    info = qemu_info(rescued.path / "disk.rescue", "qcow2")
    assert info["backing-filename"] == str(host.settings.base_dir / inst.record.image_base)
    assert str(rescued.path / "disk.rescue") in json.loads((rescued.path / "disk.info").read_text())
    assert sha256(inst.path / "disk") == before
    with pytest.raises(InvalidRequest):
        host.rescue_instance("vm1", None)
    back = host.unrescue_instance("vm1")
    assert not (back.path / "disk.rescue").exists() and back.record.rescue is None
    assert str(back.path / "disk.rescue") not in (back.path / "disk.info").read_text()


def test_delete_keeps_base(host: Host, image: Path) -> None:
    inst = host.create_instance(spec(), ImageRequest(str(image)))
    bases = sorted(p.name for p in host.settings.base_dir.iterdir())
    host.delete_instance("vm1")
    assert not inst.path.exists() and host.instances() == []
    assert sorted(p.name for p in host.settings.base_dir.iterdir()) == bases


def test_names_and_uuids_are_unique(host: Host, image: Path) -> None:
    host.create_instance(spec(), ImageRequest(str(image)))
    with pytest.raises(InstanceExists):
        host.create_instance(
            spec(uuid="11111111-2222-4333-8444-555555555555"), ImageRequest(str(image))
        )
    with pytest.raises(InstanceExists):
        host.create_instance(spec(name="other"), ImageRequest(str(image)))


def test_show_reads_disk_facts(host: Host, image: Path) -> None:
    data = host.describe(host.create_instance(spec(), ImageRequest(str(image))))
    disks = {d["name"]: d for d in data["disks"]}
    assert disks["disk"]["format"] == "qcow2" and disks["disk"]["virtual_size"] == GiB
    assert disks["disk"]["backing_file"] == str(host.settings.base_dir / data["image_base"])
    assert disks["disk.swap"]["backing_file"].endswith("swap_64")
    assert all(d["allocated"] > 0 for d in disks.values())


def cli(instances: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        vmdisk_argv(instances, *args),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_dry_run_touches_nothing(tmp_path: Path, image: Path) -> None:
    inst = tmp_path / "instances"
    result = cli(inst, "create", "vm", "--image", str(image), "--flavor", "m1.small", "--dry-run")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True
    assert [d["name"] for d in plan["disks"]] == ["disk"]
    assert plan["disks"][0]["size"] == 20 * GiB
    assert not inst.exists()


def test_cli_show_and_list_json(tmp_path: Path, image: Path) -> None:
    inst = tmp_path / "instances"
    created = cli(
        inst,
        "create",
        "web",
        "--image",
        str(image),
        "--vcpus",
        "1",
        "--ram-mb",
        "128",
        "--root-gb",
        "1",
        "--swap-mb",
        "32",
    )
    assert created.returncode == 0, created.stderr
    shown = json.loads(cli(inst, "show", "web").stdout)
    for key in ("name", "uuid", "path", "backend", "flavor", "image_id", "disks"):
        assert key in shown
    for disk in shown["disks"]:
        assert {"name", "path", "format", "virtual_size", "allocated", "backing_file"} <= set(disk)
    listed = json.loads(cli(inst, "list").stdout)
    assert [i["name"] for i in listed] == ["web"] and "disks" not in listed[0]


def test_parallel_creates_from_one_base(tmp_path: Path, image: Path) -> None:
    inst = tmp_path / "instances"
    assert cli(inst, "image", "fetch", str(image)).returncode == 0
    base = next(p for p in (inst / "_base").iterdir() if len(p.name) == 40)
    digest = sha256(base)
    procs = [
        subprocess.Popen(
            vmdisk_argv(
                inst,
                "create",
                f"p{i}",
                "--image",
                str(image),
                "--flavor",
                "m1.tiny",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(6)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, outs
    listed = json.loads(cli(inst, "list").stdout)
    assert sorted(i["name"] for i in listed) == [f"p{i}" for i in range(6)]
    assert sha256(base) == digest
    for i in listed:
        run("qemu-img", "check", "-f", "qcow2", Path(i["path"]) / "disk")
