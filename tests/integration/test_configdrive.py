"""Config drives read back by independent tools (xorriso, mtools, blkid) and by cloud-init."""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from tests.images import MiB, blkid, ext4_image, run, vmdisk_argv
from vmdisk.configdrive.metadata import network_data_from_nics
from vmdisk.errors import InvalidRequest
from vmdisk.host import Host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import ConfigDriveSpec, InstanceSpec
from vmdisk.settings import Flavor, Settings

READER = Path(__file__).parent.parent / "cloudinit_reader.py"
UUID = "3b0f6a4e-8f0d-4b1e-9a51-2c6b7f0a9d11"
USER_DATA = b"#cloud-config\nhostname: cd-test\nruncmd:\n  - [echo, '\xc3\xa9\x00binary?']\n"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBvmdiskTestKeyMaterialxxxxxxxxxxxxxxxxxxxx alice@laptop"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ext4_image(tmp_path_factory.mktemp("img") / "root.raw", {"m": b"x"}, size=16 * MiB)


def drive_spec(**kw: object) -> ConfigDriveSpec:
    base = ConfigDriveSpec(
        user_data=USER_DATA,
        ssh_keys=(("alice@laptop", KEY),),
        admin_pass="s3cret-pass",
        files=(("/etc/motd", b"hello from vmdisk\n"), ("/opt/app/conf.ini", b"[a]\nb=1\n")),
        meta=(("role", "web"),),
        hostname="cd-test",
        network_data=network_data_from_nics(
            [
                {
                    "mac": "52:54:00:12:34:56",
                    "ip": "192.0.2.10/24",
                    "gateway": "192.0.2.1",
                    "dns": "192.0.2.53",
                }
            ]
        ),
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def make(settings: Settings, image: Path, spec: ConfigDriveSpec) -> Path:
    inst = Host(settings).create_instance(
        InstanceSpec("cd", UUID, Flavor("f", 1, 128, 1), config_drive=spec),
        ImageRequest(str(image)),
    )
    return inst.path


def read_back(kind: str, directory: Path) -> dict[str, object]:
    out = subprocess.run(
        ["/usr/bin/python3", str(READER), kind, str(directory)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def extract_iso(iso: Path, target: Path) -> Path:
    run("xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/", target)
    return target


def check_config2(seen: dict[str, object]) -> None:
    assert seen["instance_id"] == UUID
    assert seen["hostname"] == "cd-test"
    assert base64.b64decode(str(seen["userdata"])) == USER_DATA
    assert seen["public_keys"] == {"alice@laptop": KEY}
    files = {k: base64.b64decode(v) for k, v in dict(seen["files"]).items()}  # type: ignore[arg-type]
    assert files == {"/etc/motd": b"hello from vmdisk\n", "/opt/app/conf.ini": b"[a]\nb=1\n"}
    network = dict(seen["network"])  # type: ignore[arg-type]
    assert network["version"] == 1
    phys = network["config"][0]
    assert phys["mac_address"] == "52:54:00:12:34:56"
    assert phys["subnets"][0]["address"] == "192.0.2.10"


def test_iso_config_drive_is_read_by_cloud_init(
    settings: Settings, image: Path, tmp_path: Path
) -> None:
    d = make(settings, image, drive_spec())
    drive = d / "disk.config"
    assert blkid(drive)["LABEL"] == "config-2"
    assert blkid(drive)["TYPE"] == "iso9660"
    assert json.loads((d / "disk.info").read_text())[str(drive)] == "raw"
    tree = extract_iso(drive, tmp_path / "x")
    check_config2(read_back("config-2", tree))
    md = json.loads((tree / "openstack/latest/meta_data.json").read_text())
    assert md["uuid"] == UUID and md["admin_pass"] == "s3cret-pass"
    assert md["keys"] == [{"name": "alice@laptop", "type": "ssh", "data": KEY}]
    assert md["files"][0] == {"path": "/etc/motd", "content_path": "/content/0000"}
    assert len(base64.b64decode(md["random_seed"])) == 512
    old = json.loads((tree / "openstack/2012-08-10/meta_data.json").read_text())
    assert "random_seed" not in old and "project_id" not in old
    assert not (tree / "openstack/2012-08-10/vendor_data.json").exists()
    assert (tree / "openstack/2016-10-06/vendor_data2.json").exists()
    assert sorted(p.name for p in (tree / "ec2").iterdir()) == ["2009-04-04", "latest"]
    assert (tree / "ec2/latest/user-data").read_bytes() == USER_DATA


def test_vfat_config_drive(settings: Settings, image: Path, tmp_path: Path) -> None:
    d = make(settings, image, drive_spec(format="vfat"))
    drive = d / "disk.config"
    info = blkid(drive)
    assert (info["LABEL"], info["TYPE"]) == ("config-2", "vfat")
    out = tmp_path / "v"
    out.mkdir()
    run("mcopy", "-s", "-i", drive, "::/openstack", "::/ec2", out)
    check_config2(read_back("config-2", out))


def test_without_network_data_the_drive_configures_the_instances_mac(
    settings: Settings, image: Path, tmp_path: Path
) -> None:
    d = make(settings, image, ConfigDriveSpec())
    tree = extract_iso(d / "disk.config", tmp_path / "e")
    network = json.loads((tree / "openstack/latest/network_data.json").read_text())
    record = json.loads((d / "instance.json").read_text())
    assert [link["ethernet_mac_address"] for link in network["links"]] == record["macs"]
    assert [n["type"] for n in network["networks"]] == ["ipv4_dhcp"]
    assert not (tree / "openstack/latest/user_data").exists()
    assert read_back("config-2", tree)["instance_id"] == UUID


def test_nocloud_seed(settings: Settings, image: Path, tmp_path: Path) -> None:
    from vmdisk.configdrive.metadata import nocloud_network_config

    net = nocloud_network_config([{"mac": "52:54:00:aa:bb:cc", "ip": "dhcp"}])
    d = make(settings, image, drive_spec(seed="nocloud", files=(), network_data=net))
    drive = d / "disk.config"
    assert blkid(drive)["LABEL"] == "cidata"
    seen = read_back("nocloud", extract_iso(drive, tmp_path / "n"))
    assert seen["instance_id"] == UUID and seen["hostname"] == "cd-test"
    assert base64.b64decode(str(seen["userdata"])) == USER_DATA
    assert seen["public_keys"] == [KEY]
    assert dict(seen["network"])["version"] == 2  # type: ignore[arg-type]


def test_too_large_vfat_is_refused(settings: Settings, image: Path) -> None:
    big = drive_spec(format="vfat", files=(("/big", b"\x01" * (61 * MiB)),))
    with pytest.raises(InvalidRequest) as err:
        make(settings, image, big)
    assert err.value.reason == "too-large"
    assert Host(settings).instances() == []


def test_cli_limits_and_guest_paths(tmp_path: Path, image: Path) -> None:
    inst = tmp_path / "instances"
    big = tmp_path / "ud"
    big.write_bytes(b"#cloud-config\n" + b"#" * 70000)
    cases = [
        ["--user-data", str(big)],
        ["--inject-file", f"../etc/x={big}"],
        ["--inject-file", f"/a/../b={big}"],
        ["--inject-file", "relative/path=/dev/null"],
    ]
    for extra in cases:
        result = subprocess.run(
            vmdisk_argv(
                inst,
                "create",
                "x",
                "--image",
                str(image),
                "--flavor",
                "m1.tiny",
                "--config-drive",
                *extra,
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 2, (extra, result.stdout)
        assert json.loads(result.stdout)["error"]["type"] == "InvalidRequest"
    assert not inst.exists() or not list(inst.glob("*-*-*"))


def test_demo_user_data_passes_cloud_init_schema(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "scripts" / "demo").read_text()
    body = text.split("cat > \"$DEMO/user-data.yaml\" <<'YAML'\n", 1)[1].split("\nYAML", 1)[0]
    path = tmp_path / "ud.yaml"
    path.write_text(body + "\n")
    result = run("cloud-init", "schema", "-c", path, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
