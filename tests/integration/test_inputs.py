"""What users type or hand in, through the real CLI: refused with one line and exit 2, or written
so that every libvirt.xml parses and validates (virt-xml-validate) and nothing is half-made."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.images import MiB
from vmdisk.cli.main import main
from vmdisk.validate import bad_character

pytestmark = pytest.mark.timeout(300)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Exit code and the one error line (stderr), or stdout when it worked."""
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, err.strip() if code else out


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "root.raw"
    with open(path, "wb") as fh:
        fh.write(b"vmdisk-test-root" * 64)
        fh.truncate(MiB)
    return path


def create(tmp_path: Path, image: Path, name: str, *extra: str) -> list[str]:
    inst = tmp_path / "inst"
    return [
        "--instances-path",
        str(inst),
        "create",
        name,
        "--image",
        str(image),
        "--flavor",
        "m1.tiny",
        *extra,
    ]


def instance_dirs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "inst"
    if not root.exists():
        return []
    return [p for p in root.iterdir() if (p / "instance.json").exists()]


# --- item 2: user files are size-checked and must be regular files -------------------------


@pytest.mark.parametrize("flag", ["--user-data", "--ssh-key", "--network-data", "--inject-file"])
def test_devices_fifos_and_directories_are_refused(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in (("/dev/zero", "a character device"), (str(fifo), "a FIFO")):
        value = f"/etc/x={path}" if flag == "--inject-file" else path
        extra = ("--config-drive",) if flag == "--inject-file" else ()
        code, line = cli(capsys, *create(tmp_path, image, "a", flag, value, *extra))
        assert code == 2, line
        assert line.startswith("vmdisk: error:") and kind in line and len(line.splitlines()) == 1
    assert instance_dirs(tmp_path) == []


def test_oversized_user_data_is_refused_before_it_is_read(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sparse = tmp_path / "huge"
    with open(sparse, "wb") as fh:
        fh.truncate(64 << 30)  # 64 GiB of nothing: reading it whole would take the host down
    code, line = cli(capsys, *create(tmp_path, image, "a", "--user-data", str(sparse)))
    assert code == 2 and "is 68719476736 bytes; the limit is 65535 bytes" in line


def test_a_file_whose_size_lies_is_cut_at_the_limit(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fstat's size is not trusted alone: /proc files say 0 bytes (and a writer may append)."""
    maps = Path("/proc/self/smaps")
    assert maps.stat().st_size == 0 and len(maps.read_bytes()) > 100_000
    code, line = cli(capsys, *create(tmp_path, image, "a", "--ssh-key", str(maps)))
    assert code == 2 and "ssh key /proc/self/smaps is over 16384 bytes" in line, line


# --- item 3: nothing that breaks libvirt.xml gets through ----------------------------------

NASTY = ["a\x01b", "a\x1b[31mred", "line\nbreak", "tab\there", "del\x7f", "c1\x85x", "bom\ufffe"]
NOT_UTF8 = os.fsdecode(b"caf\xe9")  # what Python makes of a Latin-1 byte in argv


def validate_xml(path: Path) -> None:
    result = subprocess.run(
        ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="needs libvirt-clients")
def test_every_written_libvirt_xml_validates(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = []
    for n, bad in enumerate([*NASTY, NOT_UTF8]):
        for flag in ("--image-id", "--cmdline", "--hostname"):
            extra = ("--kernel", str(image)) if flag == "--cmdline" else ()
            code, line = cli(capsys, *create(tmp_path, image, f"x{n}", flag, bad, *extra))
            refused.append((flag, bad, code, line))
        code, line = cli(capsys, *create(tmp_path, image, bad))  # the instance name itself
        refused.append(("name", bad, code, line))
    for flag, bad, code, line in refused:
        assert code == 2, (flag, bad, line)
        assert line.startswith("vmdisk: error:") and len(line.splitlines()) == 1, (flag, bad)
        assert line.isprintable(), (flag, line)  # the error line itself is safe on a terminal
    assert instance_dirs(tmp_path) == []
    # What is odd but legitimate is written escaped, and validates.
    for n, odd in enumerate(['<a href="x">&amp;</a>', "]]>'\"", "image ü 日本", "x" * 1000]):
        code, out = cli(capsys, *create(tmp_path, image, f"ok{n}", "--image-id", odd))
        assert code == 0, out
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(bytes(0x202) + b"HdrS" + bytes(4096))  # the Linux boot header's magic
    code, out = cli(
        capsys,
        *create(
            tmp_path,
            image,
            "k",
            "--kernel",
            str(kernel),
            "--cmdline",
            'root=/dev/vda console=ttyS0 x="<&>"',
        ),
    )
    assert code == 0, out
    written = instance_dirs(tmp_path)
    assert len(written) == 5
    for directory in written:
        validate_xml(directory / "libvirt.xml")


def test_passwords_with_control_characters_are_refused_without_being_shown(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for flag in ("--admin-pass", "--inject-password"):
        code, line = cli(
            capsys, *create(tmp_path, image, "a", "--config-drive", flag, "hunter2\nx")
        )
        assert code == 2 and "printable" in line and "hunter2" not in line, line


def test_flavor_names_and_instances_path_with_control_characters_are_settings_errors(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "vmdisk.toml"
    config.write_text('[flavors."m\\u0001x"]\nvcpus = 1\nmemory_mb = 64\nroot_gb = 1\n')
    code, line = cli(capsys, "--config", str(config), *create(tmp_path, image, "a"))
    assert code == 3 and "flavor name" in line
    code, line = cli(capsys, "--instances-path", str(tmp_path / "i\x1bj"), "list")
    assert code == 3 and "control character U+001B" in line


# --- item 5: NICs and network data ---------------------------------------------------------


@pytest.mark.parametrize(
    ("nic", "words"),
    [
        ("mac=52:54:00:12:34", "is not a MAC address"),
        ("mac=01:00:5e:00:00:01", "multicast"),
        ("mac=00:00:00:00:00:00", "all zeros"),
        ("mac=52:54:00:12:34:56,ip=192.0.2.300/24", "is not ADDRESS/PREFIX"),
        ("mac=52:54:00:12:34:56,ip=192.0.2.5/33", "is not ADDRESS/PREFIX"),
        ("mac=52:54:00:12:34:56,ip=192.0.2.0/24", "network or broadcast address"),
        ("mac=52:54:00:12:34:56,ip=192.0.2.5/24,gateway=198.51.100.1", "not another host in"),
        ("mac=52:54:00:12:34:56,ip=2001:db8::5/64,gateway=192.0.2.1", "not another host in"),
        ("mac=52:54:00:12:34:56,gateway=192.0.2.1", "needs a static ip"),
        ("mac=52:54:00:12:34:56,dns=resolver", "is not an IPv4 or IPv6 address"),
        ("mac=52:54:00:12:34:56,ip=2001:db8::5/64,mtu=1000", "outside 1280-65535"),
    ],
)
def test_bad_nics_are_refused_naming_the_field(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str], nic: str, words: str
) -> None:
    code, line = cli(capsys, *create(tmp_path, image, "a", "--nic", nic))
    assert code == 2 and words in line and line.startswith("vmdisk: error: --nic"), line


def test_good_nics_reach_network_data(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nics = [
        "mac=52:54:00:12:34:56,ip=192.0.2.5/24,gateway=192.0.2.1,dns=192.0.2.53",
        "mac=52:54:00:12:34:57,ip=2001:db8::5/64,gateway=2001:db8::1",
    ]
    args = create(tmp_path, image, "a", "--nic", nics[0], "--nic", nics[1])
    code, out = cli(capsys, "--json", *args)
    assert code == 0, out
    code, line = cli(capsys, *create(tmp_path, image, "b", "--nic", nics[0], "--nic", nics[0]))
    assert code == 2 and "two NICs have the MAC 52:54:00:12:34:56" in line


GOOD_NETWORK_DATA = {
    "links": [
        {"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:56", "mtu": 1500},
        {
            "id": "vl",
            "type": "vlan",
            "vlan_link": "eth0",
            "vlan_id": 42,
            "vlan_mac_address": "52:54:00:12:34:57",
        },
    ],
    "networks": [
        {
            "id": "n0",
            "type": "ipv4",
            "link": "eth0",
            "ip_address": "192.0.2.5",
            "netmask": "255.255.255.0",
            "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.0.2.1"}],  # noqa: S104
        },
        {"id": "n1", "type": "ipv6_slaac", "link": "vl"},
    ],
    "services": [{"type": "dns", "address": "192.0.2.53"}],
}


def _broken(path: str, value: object) -> dict[str, object]:
    doc = json.loads(json.dumps(GOOD_NETWORK_DATA))
    *parents, last = path.split(".")
    target = doc
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return doc  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        ("links.0.ethernet_mac_address", KeyError, "links[0].ethernet_mac_address is missing"),
        ("links.0.ethernet_mac_address", "zz:54:00:12:34:56", "is not a MAC address"),
        ("links.0.type", "token-ring", "links[0].type 'token-ring' is not one of"),
        ("links.0.mtu", "1500", "links[0].mtu must be a number, not str"),
        ("links.1.vlan_link", "eth9", "links[1].vlan_link names no link: 'eth9'"),
        ("networks.0.link", "eth1", "networks[0].link 'eth1' names no link"),
        ("networks.0.type", "ipv5", "networks[0].type 'ipv5' is not one of"),
        ("networks.0.ip_address", KeyError, "networks[0].ip_address is missing"),
        ("networks.0.ip_address", "192.0.2.999", "networks[0].ip_address"),
        ("networks.0.routes.0.gateway", "gw", "networks[0].routes[0].gateway 'gw' is not an"),
        ("services.0.address", "dns.example", "services[0].address"),
        ("links", {"id": "eth0"}, "network data: links must be a list"),
        ("vifs", [], "vifs is not a network_data.json key"),
    ],
)
def test_bad_network_data_is_refused_naming_the_field(
    tmp_path: Path,
    image: Path,
    capsys: pytest.CaptureFixture[str],
    path: str,
    value: object,
    words: str,
) -> None:
    doc = tmp_path / "network_data.json"
    doc.write_text(json.dumps(_broken(path, value)))
    code, line = cli(capsys, *create(tmp_path, image, "a", "--network-data", str(doc)))
    assert code == 2 and words in line, line
    assert instance_dirs(tmp_path) == []


def test_good_network_data_is_accepted(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "network_data.json"
    doc.write_text(json.dumps(GOOD_NETWORK_DATA))
    code, out = cli(capsys, *create(tmp_path, image, "a", "--network-data", str(doc)))
    assert code == 0, out
    (drive,) = [d / "disk.config" for d in instance_dirs(tmp_path)]
    assert drive.exists()
    doc.write_text("{not json")
    code, line = cli(capsys, *create(tmp_path, image, "b", "--network-data", str(doc)))
    assert code == 2 and "is not JSON" in line


# --- item 6: user data without --config-drive, and #cloud-config that is not YAML -----------


def drive_files(drive: Path) -> dict[str, bytes]:
    """The drive's files, read by xorriso (an independent ISO9660 reader)."""
    out = drive.parent / "extracted"
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(drive), "-extract", "/", str(out)],
        check=True,
        capture_output=True,
    )
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_user_data_alone_implies_a_config_drive(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_bytes(b"#cloud-config\nhostname: from-user-data\n")
    code, out = cli(capsys, "--json", *create(tmp_path, image, "a", "--user-data", str(user_data)))
    assert code == 0, out
    (directory,) = instance_dirs(tmp_path)
    files = drive_files(directory / "disk.config")
    assert files["openstack/latest/user_data"] == user_data.read_bytes()
    record = json.loads((directory / "instance.json").read_text())
    assert record["config_drive"] == {"seed": "config-2", "format": "iso9660"}
    code, out = cli(
        capsys, *create(tmp_path, image, "b", "--seed", "nocloud", "--user-data", str(user_data))
    )
    assert code == 0, out


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (b"#cloud-config\nusers:\n  - name: a\n   sudo: ALL\n", "line 4"),
        (b"#cloud-config\npackages: [vim\n", "line 3"),
        (b"#cloud-config\nruncmd:\n\t- ls\n", "line 3"),
        (b"#cloud-config\n- just\n- a list\n", "must be a mapping"),
        (b"#cloud-config\nkey: caf\xe9\n", "line 2: #cloud-config is not UTF-8"),
    ],
)
def test_invalid_cloud_config_is_refused_with_its_line(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str], text: bytes, where: str
) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_bytes(text)
    code, line = cli(
        capsys, *create(tmp_path, image, "a", "--config-drive", "--user-data", str(user_data))
    )
    assert code == 2 and where in line and str(user_data) in line, line
    assert instance_dirs(tmp_path) == []


def test_scripts_and_other_user_data_pass_unparsed(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_bytes(b"#!/bin/sh\necho [unbalanced: {\n")
    code, out = cli(capsys, *create(tmp_path, image, "a", "--user-data", str(user_data)))
    assert code == 0, out


# --- item 1: credentials are never stored; files that hold secrets are the owner's -----------

SECRETS = (b"s3cretpw", b"t0kensecret")


def _credential_url(port: int) -> str:
    return f"http://alice:s3cretpw@127.0.0.1:{port}/img.raw?token=t0kensecret&v=2"


def _files_with_secrets(root: Path, skip: tuple[str, ...] = ()) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.name.endswith(skip):
            data = path.read_bytes()
            found += [f"{path.relative_to(root)}: {s.decode()}" for s in SECRETS if s in data]
    return found


def test_url_credentials_reach_no_file_and_no_log(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.httpserver import Route, serve

    with serve({"/img.raw?token=t0kensecret&v=2": Route(image.read_bytes())}) as srv:
        url = _credential_url(srv.port)
        args = [
            "-vv",
            "--instances-path",
            str(tmp_path / "inst"),
            "create",
            "web",
            "--image",
            url,
            "--flavor",
            "m1.tiny",
            "--format",
            "raw",
            "--user-data",
            str(image.parent / "ud"),
        ]
        (image.parent / "ud").write_bytes(b"#cloud-config\n{}\n")
        code = main(args)
        out, err = capsys.readouterr()
    assert code == 0, err
    assert not [s for s in SECRETS if s.decode() in out + err], "printed or logged"
    (directory,) = instance_dirs(tmp_path)
    record = json.loads((directory / "instance.json").read_text())
    assert record["image_source"] == f"http://****@127.0.0.1:{srv.port}/img.raw?token=***&v=2"
    assert record["image_id"] == f"http://127.0.0.1:{srv.port}/img.raw?token=***&v=2"
    # The _base record's "source" is HttpSource.display (imagecache/sources.py), checked below.
    assert _files_with_secrets(tmp_path / "inst", skip=(".info",)) == []
    validate_xml(directory / "libvirt.xml")
    modes = {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}
    assert modes["instance.json"] == 0o600 and modes["disk.config"] == 0o600  # admin_pass
    assert modes["console.log"] & 0o007 == 0  # the guest may print a generated password


def test_url_token_is_not_in_the_base_record(tmp_path: Path, image: Path) -> None:
    from tests.httpserver import Route, serve
    from vmdisk.host import Host
    from vmdisk.request import image_request
    from vmdisk.settings import load_settings

    host = Host(load_settings(None, env={}, overrides={"instances_path": str(tmp_path / "i")}))
    with serve({"/img.raw?token=t0kensecret&v=2": Route(image.read_bytes())}) as srv:
        host.fetch_image(image_request(_credential_url(srv.port), None, "raw", None, None))
    assert _files_with_secrets(tmp_path / "i") == []


# --- item 4: settings that reach qemu's command line keep to their grammar ------------------


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("network", "bridge:br0,helper=/tmp/evil", "Linux interface name"),
        ("network", "bridge:br0 ", "Linux interface name"),
        ("machine_type", "pc,accel=kvm", "is not a qemu machine type"),
        ("machine_type", "pc\x01", "is not a qemu machine type"),
        ("images_rbd_pool", "vms:mon_host=192.0.2.9", "would be read by qemu as options"),
        ("images_rbd_pool", "vms@snap", "would be read by qemu as options"),
        ("rbd_user", "admin:keyring=/tmp/k", "would be read by qemu as options"),
        ("images_rbd_ceph_conf", "/etc/ceph/a.conf:id=admin", "without ':', ',' or"),
        ("images_rbd_ceph_conf", "ceph.conf", "must be an absolute path"),
        ("rbd_secret_uuid", "not-a-uuid", "is not a UUID"),
    ],
)
def test_qemu_bound_settings_are_refused_by_grammar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str, words: str
) -> None:
    config = tmp_path / "vmdisk.toml"
    config.write_text(f"[libvirt]\n{key} = {json.dumps(value)}\n")
    code, line = cli(capsys, "--config", str(config), "--instances-path", str(tmp_path), "list")
    assert code == 3 and f"[libvirt] {key}: " in line and words in line, line
    assert len(line.splitlines()) == 1
    env = {**os.environ, f"VMDISK_LIBVIRT__{key.upper()}": value}
    result = subprocess.run(
        [sys.executable, "-m", "vmdisk", "--instances-path", str(tmp_path), "list"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3 and words in result.stderr, result.stderr


def test_url_token_is_not_in_error_messages(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.httpserver import serve

    with serve({}) as srv:
        args = create(tmp_path, image, "b")
        args[args.index("--image") + 1] = _credential_url(srv.port)
        code, line = cli(capsys, *args)
    assert code == 1 and "HTTP 404" in line
    assert not [s for s in SECRETS if s.decode() in line], line


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(image_id=st.text(min_size=1, max_size=40))
def test_any_image_id_is_refused_or_round_trips_through_libvirt_xml(
    tmp_path_factory: pytest.TempPathFactory, image_id: str
) -> None:
    """Whatever text --image-id is: exit 2, or a libvirt.xml that parses and holds it exactly."""
    tmp = tmp_path_factory.mktemp("id")
    source = tmp / "root.raw"
    source.write_bytes(b"\0" * 512)
    code = main(create(tmp, source, "p", "--image-id", image_id))
    dirs = instance_dirs(tmp)
    if code != 0:
        assert code == 2 and dirs == []
        assert bad_character(image_id) is not None
        return
    (directory,) = dirs
    root = ET.parse(directory / "libvirt.xml").getroot()
    ns = {"v": "https://github.com/vmdisk/vmdisk/xmlns/instance/1.0"}
    image = root.find("metadata/v:instance/v:image", ns)
    assert image is not None and image.get("id") == image_id


def test_boot_cmdline_with_control_characters_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vmdisk boot --cmdline` reaches qemu's -append and libvirt.xml's <cmdline>: the same
    check as create's, before the instance is even looked up."""
    root = str(tmp_path / "i")
    code, line = cli(capsys, "--instances-path", root, "boot", "nope", "--cmdline", "a\x01b")
    assert code == 2 and "control character U+0001" in line and "\n" not in line
