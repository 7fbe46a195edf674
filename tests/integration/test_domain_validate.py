"""Every domain XML validates against libvirt's schema and is accepted by test:///default."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.images import MiB, ext4_image, run
from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import ConfigDriveSpec, InstanceSpec
from vmdisk.settings import Flavor, Settings

GOLDEN = sorted((Path(__file__).parent.parent / "data" / "golden").glob("*.xml"))


def accepted(path: Path) -> None:
    run("virt-xml-validate", path, "domain")
    result = run("virsh", "-c", "test:///default", "define", path)
    assert "defined" in result.stdout


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_files_are_valid(path: Path) -> None:
    accepted(path)


def test_created_instance_has_a_valid_libvirt_xml(settings: Settings, tmp_path: Path) -> None:
    image = ext4_image(tmp_path / "r.raw", {"m": b"1"}, size=8 * MiB)
    host = Host(settings)
    spec = InstanceSpec(
        "xmlvm",
        "c0ffee00-1234-4abc-8def-00000000abcd",
        Flavor("f", 2, 1024, 1, 1, 32),
        config_drive=ConfigDriveSpec(),
    )
    inst = host.create_instance(spec, ImageRequest(str(image)))
    xml = inst.path / "libvirt.xml"
    accepted(xml)
    text = xml.read_text()
    assert "<vcpu>2</vcpu>" in text and '<memory unit="KiB">1048576</memory>' in text
    rescued = host.rescue_instance("xmlvm", None)
    accepted(rescued.path / "libvirt.xml")
    assert "disk.rescue" in (rescued.path / "libvirt.xml").read_text()
    host.unrescue_instance("xmlvm")
    assert "disk.rescue" not in xml.read_text()
