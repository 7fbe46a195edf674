"""The pieces of running a guest (issue 18), without a guest: MACs, the NIC in the plan, the
domain and the qemu command line, host keys from a console, the ssh command, runtime.json."""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmdisk.boot import BootResult, QemuControl, qemu_argv
from vmdisk.errors import GuestTimeout, InvalidRequest
from vmdisk.libvirt.domain import Domain, NicDevice, render
from vmdisk.macaddr import check_mac, default_mac, macs_in
from vmdisk.model import ConfigDriveSpec, InstanceSpec
from vmdisk.plan import plan_disks
from vmdisk.runtime import ssh
from vmdisk.runtime.state import RuntimeInfo, VmState, pid_alive
from vmdisk.settings import Flavor, Settings

UUID = "0d5e6b61-602d-4589-84b3-bf038267614d"
FLAVOR = Flavor("t", 1, 512, 1)


def test_macs_are_checked_and_normalised() -> None:
    assert check_mac("52-54-00-AB-cd-01") == "52:54:00:ab:cd:01"
    for bad in ("52:54:00:12:34:56,script=/tmp/x", "52:54:00:12:34", "zz:54:00:12:34:56", ""):
        with pytest.raises(ValueError, match="six hex octets"):
            check_mac(bad)
    with pytest.raises(ValueError, match="multicast"):
        check_mac("01:00:5e:00:00:01")


def test_default_mac_is_the_uuids_own() -> None:
    mac = default_mac(UUID)
    assert mac == default_mac(UUID) and mac.startswith("52:54:00:")
    assert check_mac(mac) == mac and mac != default_mac(UUID.replace("0", "1"))


def test_macs_in_both_network_data_forms() -> None:
    openstack = {"links": [{"ethernet_mac_address": "52:54:00:00:00:01"}, {"id": "x"}]}
    v2 = {"version": 2, "ethernets": {"eth0": {"match": {"macaddress": "52:54:00:00:00:02"}}}}
    assert macs_in(openstack) == ["52:54:00:00:00:01"]
    assert macs_in(v2) == ["52:54:00:00:00:02"]
    assert macs_in(None) == [] and macs_in({}) == []


def _spec(drive: ConfigDriveSpec | None) -> InstanceSpec:
    return InstanceSpec("vm", UUID, FLAVOR, config_drive=drive)


def test_plan_gives_every_drive_a_nic_with_the_default_mac(settings: Settings) -> None:
    plan = plan_disks(_spec(ConfigDriveSpec()), settings, "img")
    mac = default_mac(UUID)
    assert plan.macs == (mac,)
    assert plan.config_drive is not None and plan.config_drive.network_data is not None
    link = plan.config_drive.network_data["links"][0]
    assert link["ethernet_mac_address"] == mac and link["type"] == "phy"
    assert plan.config_drive.network_data["networks"][0]["type"] == "ipv4_dhcp"
    nocloud = plan_disks(_spec(ConfigDriveSpec(seed="nocloud")), settings, "img")
    assert nocloud.config_drive is not None and nocloud.config_drive.network_data is not None
    eth0 = nocloud.config_drive.network_data["ethernets"]["eth0"]
    assert eth0["match"]["macaddress"] == mac and eth0["dhcp4"] is True
    assert plan_disks(_spec(None), settings, "img").macs == (mac,)


def test_plan_keeps_the_mac_the_network_data_names(settings: Settings) -> None:
    given = {"links": [{"ethernet_mac_address": "52:54:00:AA:BB:CC"}], "networks": []}
    plan = plan_disks(_spec(ConfigDriveSpec(network_data=given)), settings, "img")
    assert plan.macs == ("52:54:00:aa:bb:cc",)
    assert plan.config_drive is not None and plan.config_drive.network_data == given
    bad = {"links": [{"ethernet_mac_address": "52:54:00:aa:bb:cc,id=x"}]}
    with pytest.raises(InvalidRequest, match="six hex octets"):
        plan_disks(_spec(ConfigDriveSpec(network_data=bad)), settings, "img")


def _domain(nic: NicDevice | None) -> Domain:
    return Domain("qemu", "vm", UUID, 512, 1, "pc", (), Path("/i/console.log"), nic=nic)


def test_libvirt_nic_carries_the_mac() -> None:
    xml = ET.fromstring(render(_domain(NicDevice("network", "52:54:00:00:00:09", "default"))))
    iface = xml.find("devices/interface")
    assert iface is not None and iface.get("type") == "network"
    assert iface.find("mac").get("address") == "52:54:00:00:00:09"  # type: ignore[union-attr]
    assert iface.find("source").get("network") == "default"  # type: ignore[union-attr]
    serial = xml.find("devices/serial")
    assert serial is not None and serial.get("type") == "pty"
    assert serial.find("log").get("file") == "/i/console.log"  # type: ignore[union-attr]


def test_qemu_nic_forwards_ssh_and_carries_the_mac() -> None:
    argv = qemu_argv(_domain(NicDevice("user", "52:54:00:00:00:07", ssh_port=2222)))
    assert argv[argv.index("-netdev") + 1] == "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"
    assert argv[argv.index("-device") + 1] == "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:07"
    with pytest.raises(ValueError):
        NicDevice("user", "52:54:00:00:00:07,romfile=/etc/shadow")
    with pytest.raises(ValueError):
        NicDevice("bridge", "52:54:00:00:00:07", "br0,helper=/bin/sh")


def test_detached_qemu_has_pidfile_qmp_and_a_logged_console_socket() -> None:
    control = QemuControl(Path("/r/qmp.sock"), Path("/i/qemu.pid"), Path("/r/c.sock"), True)
    argv = qemu_argv(_domain(None), control)
    assert argv[argv.index("-qmp") + 1] == "unix:/r/qmp.sock,server=on,wait=off"
    assert argv[argv.index("-pidfile") + 1] == "/i/qemu.pid" and "-daemonize" in argv
    chardev = argv[argv.index("-chardev") + 1]
    assert chardev.startswith("socket,id=console0,path=/r/c.sock,server=on,wait=off")
    assert "logfile=/i/console.log,logappend=on" in chardev
    plain = qemu_argv(_domain(None))
    assert "-qmp" not in plain and "-daemonize" not in plain


CONSOLE = """[  OK  ] Started ssh.service
-----BEGIN SSH HOST KEY KEYS-----\r
ecdsa-sha2-nistp256 AAAAE2VjZHNh+old= root@vm\r
-----END SSH HOST KEY KEYS-----\r
reboot
<14>Dec  2 02:41:30 cloud-init: -----BEGIN SSH HOST KEY KEYS-----
<14>Dec  2 02:41:30 cloud-init: ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNo/new== root@vm
<14>Dec  2 02:41:30 cloud-init: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEhu root@vm
<14>Dec  2 02:41:30 cloud-init: ssh-evil AAAA root@vm
<14>Dec  2 02:41:30 cloud-init: -----END SSH HOST KEY KEYS-----
debian login:"""


def test_host_keys_come_from_the_last_block_on_the_console() -> None:
    assert ssh.host_keys(CONSOLE) == [
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNo/new==",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEhu",
    ]
    assert ssh.host_keys("no keys yet\n-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAA") == []


def test_known_hosts_and_the_ssh_command(tmp_path: Path) -> None:
    alias = ssh.host_alias(UUID)
    known = ssh.write_known_hosts(tmp_path, alias, ssh.host_keys(CONSOLE))
    assert known.read_text().splitlines()[1] == f"{alias} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEhu"
    assert known.stat().st_mode & 0o777 == 0o600
    key = tmp_path / "id"
    argv = ssh.ssh_argv(
        "127.0.0.1", 2222, "debian", identities=[key], known_hosts=known, alias=alias,
        command=("cat", "/etc/hostname"),
    )  # fmt: skip
    assert "StrictHostKeyChecking=yes" in argv and f"HostKeyAlias={alias}" in argv
    assert f"UserKnownHostsFile={known}" in argv and argv[argv.index("-i") + 1] == str(key)
    assert argv[-4:] == ["debian@127.0.0.1", "--", "cat", "/etc/hostname"]
    assert argv[argv.index("-p") + 1] == "2222"
    insecure = ssh.ssh_argv("h", 22, "root", identities=[], known_hosts=None, alias=alias)
    assert "StrictHostKeyChecking=no" in insecure and "UserKnownHostsFile=/dev/null" in insecure


def test_the_images_login_user_is_learnt_from_its_refusal() -> None:
    said = 'Please login as the user "debian" rather than the user "root".\n'
    assert ssh.login_user(said) == "debian"
    assert ssh.login_user('Please login as the user "x;rm -rf /" rather') is None
    assert ssh.login_user("Permission denied (publickey).") is None


def test_access_remembers_the_private_half(tmp_path: Path) -> None:
    (tmp_path / "id_ed25519").write_text("private")
    (tmp_path / "id_ed25519.pub").write_text("ssh-ed25519 AAAA")
    (tmp_path / "lonely.pub").write_text("ssh-ed25519 AAAA")
    access = ssh.SshAccess(
        "debian", (str(tmp_path / "id_ed25519.pub"), str(tmp_path / "lonely.pub"))
    )
    access.save(tmp_path)
    loaded = ssh.SshAccess.load(tmp_path)
    assert loaded == access and loaded.identities == [tmp_path / "id_ed25519"]
    assert ssh.SshAccess.load(tmp_path / "missing") == ssh.SshAccess()


def test_runtime_info_round_trips(tmp_path: Path) -> None:
    info = RuntimeInfo("qemu", "2026-12-02T00:00:00+00:00", ssh_port=2222, mac="52:54:00:00:00:01")
    info.save(tmp_path)
    assert RuntimeInfo.load(tmp_path) == info
    (tmp_path / "runtime.json").write_text("{not json")
    assert RuntimeInfo.load(tmp_path) is None


def test_pid_alive_needs_the_marker_in_the_command_line() -> None:
    me = os.getpid()
    marker = Path(f"/proc/{me}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert pid_alive(me, marker)
    assert not pid_alive(me, UUID)  # a reused pid is not our qemu
    assert not pid_alive(2**22 + 1, marker)
    assert VmState.UNKNOWN.active and not VmState.CRASHED.active


def test_boot_verdicts() -> None:
    ok = BootResult("qemu", "wait-for", 3.0, "")
    assert ok.check("login:") is ok
    assert BootResult("qemu", "poweroff", 3.0, "").check(None).reason == "poweroff"
    with pytest.raises(GuestTimeout, match="timed out") as err:
        BootResult("qemu", "timeout", 9.0, "").check("login:")
    assert err.value.reason == "timeout"
    with pytest.raises(GuestTimeout, match="never showed") as err:
        BootResult("libvirt", "poweroff", 9.0, "").check("login:")
    assert err.value.reason == "wait-for-not-seen"


def test_domain_replace_keeps_the_nic_checked() -> None:
    domain = dataclasses.replace(_domain(None), nic=NicDevice("user", "52:54:00:00:00:01"))
    assert domain.nic is not None and domain.nic.mac == "52:54:00:00:00:01"


def test_console_attach_relays_until_ctrl_bracket(tmp_path: Path) -> None:
    """A unix-socket server stands in for qemu's console chardev (same protocol: bytes)."""
    import socket
    import threading

    from vmdisk.runtime.console import attach

    path = tmp_path / "console.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    got = bytearray()

    def guest() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"debian login: ")
            got.extend(conn.recv(100))

    thread = threading.Thread(target=guest)
    thread.start()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b"root\r")
    attach(path, stdin=in_r, stdout=out_w)  # returns when the guest side closes
    thread.join(5)
    assert os.read(out_r, 100) == b"debian login: "
    assert bytes(got) == b"root\r"
    # A guest that keeps the console open: Ctrl-] leaves, and is not sent.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as quiet_guest:
        quiet = tmp_path / "quiet.sock"
        quiet_guest.bind(str(quiet))
        quiet_guest.listen(1)
        os.write(in_w, b"\x1d")
        attach(quiet, stdin=in_r, stdout=out_w)
        conn, _ = quiet_guest.accept()
        with conn:
            assert conn.recv(10) == b""  # closed, and nothing was sent
    server.close()
    for fd in (in_r, in_w, out_r, out_w):
        os.close(fd)


def test_console_follow_prints_the_log_of_a_stopped_guest(tmp_path: Path) -> None:
    from vmdisk.runtime.console import follow

    log = tmp_path / "console.log"
    log.write_bytes(b"[    0.000000] Linux version\nlogin: ")
    seen = bytearray()
    follow(log, seen.extend, lambda: False)
    assert bytes(seen) == log.read_bytes()


class FakeVirsh:
    """A fake of the virsh binary only (libvirtd cannot be asked in the unit tier): answers
    from a table by verb, and records every call."""

    def __init__(self, answers: dict[str, list[tuple[int, str, str]]]) -> None:
        self.answers = answers  # per verb, in order; the last one repeats
        self.calls = 0
        self.argvs: list[list[str]] = []

    def spawn(self, argv: object, *, output: object = None) -> object:
        raise AssertionError("virsh is never spawned")

    def run(self, argv: list[str], **kw: object) -> object:
        from vmdisk.tools.runner import CommandResult

        self.calls += 1
        self.argvs.append(list(argv))
        queue = self.answers.get(argv[3], [(0, "", "")])
        rc, out, err = queue.pop(0) if len(queue) > 1 else queue[0]
        return CommandResult(tuple(argv), rc, out.encode(), err.encode(), 0.0)


@pytest.mark.parametrize(
    ("answer", "state"),
    [
        ((0, "running (booted)", ""), VmState.RUNNING),
        ((0, "paused (user)", ""), VmState.PAUSED),
        ((0, "shut off (shutdown)", ""), VmState.STOPPED),
        ((0, "shut off (destroyed)", ""), VmState.STOPPED),
        ((0, "shut off (crashed)", ""), VmState.CRASHED),
        ((0, "crashed (panicked)", ""), VmState.CRASHED),
        ((1, "", "error: failed to get domain 'x'"), VmState.STOPPED),
        ((1, "", "error: failed to connect to the hypervisor"), VmState.UNKNOWN),
    ],
)
def test_libvirt_states(answer: tuple[int, str, str], state: VmState) -> None:
    from vmdisk.libvirt.runtime import LibvirtGuest
    from vmdisk.libvirt.virsh import Virsh

    fake = FakeVirsh({"domstate": [answer]})
    guest = LibvirtGuest(Virsh(fake, "qemu:///system"), "vm", UUID)  # type: ignore[arg-type]
    assert guest.state()[0] is state
    assert fake.argvs[0] == ["virsh", "-c", "qemu:///system", "domstate", UUID, "--reason"]


def test_a_missing_default_network_is_defined_and_started() -> None:
    from vmdisk.libvirt.runtime import LibvirtGuest
    from vmdisk.libvirt.virsh import Virsh

    missing = (1, "", "error: Network not found: no network with matching name 'default'")
    inactive = (0, "Name:           default\nActive:         no\n", "")
    fake = FakeVirsh({"net-info": [missing, inactive]})
    guest = LibvirtGuest(Virsh(fake, "qemu:///system"), "vm", UUID)  # type: ignore[arg-type]
    guest.ensure_network("default")
    assert [a[3] for a in fake.argvs] == ["net-info", "net-define", "net-info", "net-start"]
    fake = FakeVirsh({"net-info": [(0, "Name:   default\nActive:         yes\n", "")]})
    LibvirtGuest(Virsh(fake, "qemu:///system"), "vm", UUID).ensure_network("default")  # type: ignore[arg-type]
    assert [a[3] for a in fake.argvs] == ["net-info"]  # active already: nothing to do
    with pytest.raises(Exception, match="no network 'lab'"):
        LibvirtGuest(
            Virsh(FakeVirsh({"net-info": [(1, "", "")]}), "qemu:///system"),  # type: ignore[arg-type]
            "vm",
            UUID,
        ).ensure_network("lab")
