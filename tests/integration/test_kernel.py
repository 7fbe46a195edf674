"""Kernel and ramdisk images booted the AMI way: cached raw once, copied, in the XML, booted."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid as uuidlib
from pathlib import Path

import pytest

from tests.guest import Guest
from tests.images import MiB, ext4_image, run, sha256, vmdisk_argv
from vmdisk.errors import InvalidRequest, UnsafeImage
from vmdisk.host import Host
from vmdisk.imagecache.cleaner import CleanupPolicy
from vmdisk.imagecache.records import cache_name
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import BootOptions, InstanceSpec
from vmdisk.record import BootFile
from vmdisk.settings import Flavor, load_settings

FLAVOR = Flavor("k", 1, 512, 1)
CMDLINE = "root=/dev/vda console=ttyS0 quiet"


@pytest.fixture(scope="module")
def workdir(public_tmp: Path) -> Path:
    path = public_tmp / "kernel"
    path.mkdir()
    return path


@pytest.fixture
def host(tmp_path: Path) -> Host:
    settings = load_settings(None, env={}, overrides={"instances_path": str(tmp_path / "i")})
    return Host(
        dataclasses.replace(
            settings, libvirt=dataclasses.replace(settings.libvirt, virt_type="qemu")
        )
    )


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return ext4_image(tmp_path / "root.raw", {"marker.txt": b"kernel-boot-marker\n"}, size=16 * MiB)


def boot_files(guest: Guest) -> dict[str, ImageRequest]:
    return {
        "kernel": ImageRequest(str(guest.kernel), image_id="debian-kernel"),
        "ramdisk": ImageRequest(str(guest.initrd), image_id="busybox-initrd"),
    }


def spec(name: str) -> InstanceSpec:
    return InstanceSpec(name, str(uuidlib.uuid4()), FLAVOR, cmdline=CMDLINE)


def test_kernel_instance_files_xml_and_boot(host: Host, guest: Guest, image: Path) -> None:
    inst = host.create_instance(spec("ami"), ImageRequest(str(image)), boot_files(guest))
    assert sha256(inst.path / "kernel") == sha256(guest.kernel)
    assert sha256(inst.path / "ramdisk") == sha256(guest.initrd)
    formats = (inst.path / "disk.info").read_text()
    assert f'"{inst.path / "kernel"}": "raw"' in formats
    assert f'"{inst.path / "ramdisk"}": "raw"' in formats
    assert inst.record.kernel == BootFile("debian-kernel", cache_name("debian-kernel"))
    assert inst.record.cmdline == CMDLINE
    xml = inst.path / "libvirt.xml"
    run("virt-xml-validate", xml, "domain")
    text = xml.read_text()
    assert f"<kernel>{inst.path / 'kernel'}</kernel>" in text
    assert f"<initrd>{inst.path / 'ramdisk'}</initrd>" in text
    assert f"<cmdline>{CMDLINE}</cmdline>" in text
    result = host.boot("ami", BootOptions(via="qemu", timeout=180))  # no --kernel needed
    assert result.reason == "poweroff"
    assert "GUEST: marker kernel-boot-marker" in result.console


def test_two_instances_share_one_cached_kernel_and_prune_keeps_it(
    host: Host, guest: Guest, image: Path
) -> None:
    for name in ("a", "b"):
        host.create_instance(spec(name), ImageRequest(str(image)), boot_files(guest))
    kernel_base = host.settings.base_dir / cache_name("debian-kernel")
    assert sorted(
        p.name
        for p in host.settings.base_dir.iterdir()
        if p.name.startswith(cache_name("debian-kernel"))
    ) == [kernel_base.name, kernel_base.name + ".info"]
    old = time.time() - 30 * 86400
    for path in host.settings.base_dir.iterdir():
        os.utime(path, (old, old))
    zero = CleanupPolicy(
        original_min_age=0, resized_min_age=0, template_min_age=0, temporary_min_age=0
    )
    _, result = host.prune(policy=zero)
    assert result is not None and result.removed == []  # kernel and ramdisk are in use
    host.delete_instance("a")
    host.delete_instance("b")
    _, result = host.prune(policy=zero)
    assert result is not None and cache_name("debian-kernel") in result.removed
    assert cache_name("busybox-initrd") in result.removed


def test_rescue_with_its_own_kernel(host: Host, guest: Guest, image: Path) -> None:
    host.create_instance(spec("r"), ImageRequest(str(image)))
    inst = host.rescue_instance(
        "r",
        None,
        {"kernel": ImageRequest(str(guest.kernel)), "ramdisk": ImageRequest(str(guest.initrd))},
    )
    assert (inst.path / "kernel.rescue").exists() and (inst.path / "ramdisk.rescue").exists()
    text = (inst.path / "libvirt.xml").read_text()
    assert f"<kernel>{inst.path / 'kernel.rescue'}</kernel>" in text
    back = host.unrescue_instance("r")
    assert not (back.path / "kernel.rescue").exists()
    assert "<kernel>" not in (back.path / "libvirt.xml").read_text()


def test_bad_kernel_and_ramdisk_refused(host: Host, image: Path, tmp_path: Path) -> None:
    for name, reason in (("kernel", "not-a-kernel"), ("ramdisk", "not-a-ramdisk")):
        files = {"kernel": ImageRequest(str(image), image_id="k-" + name)}
        if name == "ramdisk":
            files = {
                "kernel": ImageRequest(
                    "/boot/"
                    + next(p.name for p in Path("/boot").iterdir() if p.name.startswith("vmlinuz"))
                ),
                "ramdisk": ImageRequest(str(image), image_id="r-x"),
            }
        with pytest.raises(UnsafeImage) as err:
            host.create_instance(spec("bad"), ImageRequest(str(image)), files)
        assert err.value.reason == reason
    assert host.instances() == []


def test_an_image_id_is_one_kind_of_thing(host: Host, image: Path) -> None:
    host.fetch_image(ImageRequest(str(image)))
    with pytest.raises(InvalidRequest) as err:
        host.create_instance(
            spec("x"), ImageRequest(str(image)), {"kernel": ImageRequest(str(image))}
        )
    assert err.value.reason == "kind-mismatch"


def test_cli_rescue_with_kernel_and_ramdisk(host: Host, guest: Guest, image: Path) -> None:
    """`vmdisk rescue --kernel K --kernel-id ID --ramdisk R`, as the README documents."""
    host.create_instance(spec("cli"), ImageRequest(str(image)))
    instances = host.settings.instances_path
    for bad, message in (
        (["--ramdisk", str(guest.initrd)], "--ramdisk needs --kernel"),
        (["--kernel-id", "k"], "--kernel-id/--ramdisk-id need --kernel/--ramdisk"),
    ):
        refused = run(*vmdisk_argv(instances, "rescue", "cli", *bad), check=False)
        assert refused.returncode == 2, refused.stdout
        error = json.loads(refused.stdout)["error"]
        assert (error["type"], error["message"]) == ("InvalidRequest", message)
    assert host.instance("cli").record.rescue is None
    result = run(
        *vmdisk_argv(
            instances,
            "rescue",
            "cli",
            "--kernel",
            str(guest.kernel),
            "--kernel-id",
            "rescue-kernel",
            "--ramdisk",
            str(guest.initrd),
        )
    )
    assert json.loads(result.stdout)["rescue"] is True
    inst = host.instance("cli")
    kernel, ramdisk = inst.path / "kernel.rescue", inst.path / "ramdisk.rescue"
    assert sha256(kernel) == sha256(guest.kernel) and sha256(ramdisk) == sha256(guest.initrd)
    formats = json.loads((inst.path / "disk.info").read_text())
    assert formats[str(kernel)] == "raw" and formats[str(ramdisk)] == "raw"
    assert inst.record.rescue is not None
    assert cache_name("rescue-kernel") in inst.record.rescue.bases
    xml = json.loads(run(*vmdisk_argv(instances, "xml", "cli", "--rescue")).stdout)["xml"]
    assert f"<kernel>{kernel}</kernel>" in xml and f"<initrd>{ramdisk}</initrd>" in xml
    assert xml == (inst.path / "libvirt.xml").read_text()
    run("virt-xml-validate", inst.path / "libvirt.xml", "domain")
