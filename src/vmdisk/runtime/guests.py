"""The lifecycle of one instance's guest: start, stop, status, address, ssh, wait.

Host wires it (runner, `[libvirt] network`, the libvirt URI) and passes instances and their
domains in; this module decides how a guest runs and asks qemu (pidfile, QMP) or libvirt what
it is doing. Nothing here writes the instance record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmdisk.errors import (
    BackendError,
    GuestTimeout,
    HostKeyUnknown,
    InstanceNotRunning,
    InstanceRunning,
    InvalidRequest,
    NotSupported,
)
from vmdisk.instances import Instance
from vmdisk.libvirt.domain import Domain, NicDevice, instance_mac
from vmdisk.libvirt.runtime import DEFAULT_NETWORK, LibvirtGuest
from vmdisk.libvirt.virsh import Virsh, libvirt_answers
from vmdisk.netspec import Interface, InterfaceKind
from vmdisk.runtime import ssh
from vmdisk.runtime.qemu import QemuGuest
from vmdisk.runtime.state import RuntimeInfo, VmState, VmStatus, runtime_dir
from vmdisk.tools.runner import Runner

VIAS = ("libvirt", "qemu")


@dataclass(frozen=True, slots=True)
class StartResult:
    name: str
    via: str
    why: str  # why this way: "asked", "libvirt answers", "libvirt does not answer"
    status: VmStatus

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "via": self.via, "why": self.why, **self.status.to_dict()}


@dataclass(frozen=True, slots=True)
class StopResult:
    name: str
    via: str | None
    graceful: bool  # powered off by itself after the ACPI button (file systems clean)
    destroyed: bool  # pulled the plug: --force, or no poweroff within the timeout
    duration: float
    was: VmState

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "via": self.via,
            "graceful": self.graceful,
            "destroyed": self.destroyed,
            "duration": round(self.duration, 2),
            "was": str(self.was),
        }


@dataclass(frozen=True, slots=True)
class SshTarget:
    host: str
    port: int
    user: str

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class WaitResult:
    name: str
    seconds: float
    target: SshTarget

    def to_dict(self) -> dict[str, Any]:
        t = self.target
        return {"name": self.name, "seconds": round(self.seconds, 1), "user": t.user,
                "host": t.host, "port": t.port}  # fmt: skip


class Guests:
    def __init__(self, runner: Runner, network: Interface | None, uri: str) -> None:
        self.runner = runner
        self.network = network
        self.uri = uri

    # ------------------------------------------------------------------ which way, and state

    def _qemu(self, inst: Instance) -> QemuGuest:
        return QemuGuest(self.runner, inst.path, inst.record.uuid)

    def _libvirt(self, inst: Instance, info: RuntimeInfo | None = None) -> LibvirtGuest:
        uri = info.uri if info is not None and info.uri else self.uri
        return LibvirtGuest(Virsh(self.runner, uri), inst.record.name, inst.record.uuid)

    def status(self, inst: Instance) -> VmStatus:
        info = RuntimeInfo.load(inst.path)
        name = inst.record.name
        if info is None:
            return VmStatus(name, VmState.STOPPED, detail="never started")
        if info.via == "libvirt":
            state, detail = self._libvirt(inst, info).state()
            return VmStatus(name, state, "libvirt", detail=detail)
        state, pid, detail = self._qemu(inst).state(info)
        port = info.ssh_port if state.active else None
        return VmStatus(name, state, "qemu", pid, f"127.0.0.1:{port}" if port else None, detail)

    def refuse_running(self, inst: Instance, doing: str) -> None:
        status = self.status(inst)
        if status.state.active:
            raise InstanceRunning(
                f"{inst.record.name} is {status.state} (via {status.via}): cannot {doing}",
                reason="running",
                hint=f"stop it first: vmdisk stop {inst.record.name}",
            )

    # ------------------------------------------------------------------ start and stop

    def choose(self, via: str | None) -> tuple[str, str]:
        if via is not None:
            if via not in VIAS:
                raise InvalidRequest(f"--via must be one of {VIAS}", reason="bad-option")
            return via, "asked"
        if self.uri == "qemu:///system" and not libvirt_answers():
            return "qemu", "libvirt does not answer"
        return "libvirt", "libvirt answers"

    def nic(self, inst: Instance, via: str) -> NicDevice:
        """Every started guest has a NIC with the instance's MAC: on the bridge the settings
        name, else libvirt's default NAT network, or qemu user networking."""
        mac = instance_mac(inst.record)
        net = self.network
        if net is not None and net.kind is InterfaceKind.BRIDGE:
            return NicDevice("bridge", mac, net.bridge, net.model)
        model = net.model if net is not None else "virtio"
        if via == "libvirt":
            return NicDevice("network", mac, DEFAULT_NETWORK, model)
        return NicDevice("user", mac, model=model)

    def start(self, inst: Instance, domain: Domain, via: str | None) -> StartResult:
        self.refuse_running(inst, "start it again")
        chosen, why = self.choose(via)
        domain = dataclasses.replace(domain, nic=self.nic(inst, chosen))
        if chosen == "libvirt":
            info = self._libvirt(inst).start(domain, inst.path / "libvirt.xml", self.uri)
        else:
            info = self._qemu(inst).start(domain)
        info.save(inst.path)
        return StartResult(inst.record.name, chosen, why, self.status(inst))

    def stop(self, inst: Instance, *, force: bool = False, timeout: float = 120) -> StopResult:
        """The ACPI power button, a wait, and the plug only after `timeout` (or at once with
        `force`). Stopping a stopped guest is not an error."""
        begin = time.monotonic()
        info = RuntimeInfo.load(inst.path)
        was = self.status(inst).state
        via = info.via if info is not None else None
        if info is None or was is VmState.STOPPED:
            return StopResult(inst.record.name, via, False, False, 0.0, was)
        if via == "libvirt":
            lv = self._libvirt(inst, info)
            powerdown, running, destroy = lv.shutdown, lv.running, lv.destroy
        else:
            q = self._qemu(inst)
            powerdown, running = (lambda: q.powerdown(info)), q.running
            destroy = lambda: q.destroy(info)  # noqa: E731
        graceful = False
        if was is VmState.RUNNING and not force:
            # A guest gone between the status and the button: the wait below sees it.
            with contextlib.suppress(BackendError):
                powerdown()
            deadline = begin + timeout
            while time.monotonic() < deadline and running():
                time.sleep(0.5)
            graceful = not running()
        destroyed = not graceful
        if destroyed:
            destroy()
        return StopResult(inst.record.name, via, graceful, destroyed, time.monotonic() - begin, was)

    def forget(self, inst: Instance) -> None:
        """Before delete: a libvirt domain vmdisk defined goes with the instance, and so does
        a socket directory outside it."""
        info = RuntimeInfo.load(inst.path)
        if info is not None and info.via == "libvirt":
            self._libvirt(inst, info).undefine()
        elif info is not None and libvirt_answers():  # once started via libvirt, then qemu
            self._libvirt(inst).undefine()
        shutil.rmtree(runtime_dir() / inst.record.uuid, ignore_errors=True)

    # ------------------------------------------------------------------ reaching the guest

    def address(self, inst: Instance) -> tuple[str, int]:
        info = RuntimeInfo.load(inst.path)
        status = self.status(inst)
        if info is None or not status.state.active:
            raise InstanceNotRunning(
                f"{inst.record.name} is {status.state}",
                reason="not-running",
                hint=f"vmdisk start {inst.record.name}",
            )
        if info.ssh_port is not None:
            return "127.0.0.1", info.ssh_port
        if info.via == "libvirt" and info.network and info.mac:
            ip = self._libvirt(inst, info).address(info.network, info.mac)
            if ip is None:
                raise InstanceNotRunning(
                    f"{inst.record.name} has no DHCP lease on {info.network} yet",
                    reason="no-address",
                    hint=f"vmdisk wait {inst.record.name} --ssh",
                )
            return ip, 22
        raise NotSupported(
            f"vmdisk cannot tell the address of {inst.record.name} on bridge {info.network}",
            reason="not-supported",
        )

    def ssh_argv(
        self,
        inst: Instance,
        command: tuple[str, ...] = (),
        *,
        user: str | None = None,
        identity: Path | None = None,
        insecure: bool = False,
    ) -> list[str]:
        host, port = self.address(inst)
        access = ssh.SshAccess.load(inst.path)
        alias = ssh.host_alias(inst.record.uuid)
        known = None if insecure else self._known_hosts(inst, alias)
        identities = [identity] if identity is not None else access.identities
        return ssh.ssh_argv(
            host,
            port,
            user or access.user or "root",
            identities=identities,
            known_hosts=known,
            alias=alias,
            command=command,
        )

    def _known_hosts(self, inst: Instance, alias: str) -> Path:
        console = inst.path / "console.log"
        try:
            text = console.read_text(errors="replace")
        except (FileNotFoundError, PermissionError):
            text = ""
        keys = ssh.host_keys(text)
        if not keys:
            raise HostKeyUnknown(
                f"{inst.record.name} printed no ssh host keys on its console yet",
                reason="host-key-unknown",
                hint="wait for cloud-init (vmdisk wait NAME --ssh), or pass --insecure",
            )
        return ssh.write_known_hosts(inst.path, alias, keys)

    def wait_ssh(
        self, inst: Instance, *, timeout: float = 600, insecure: bool = False
    ) -> WaitResult:
        """Until `ssh true` succeeds: the guest running, an address, its host keys printed,
        and sshd letting the create's key in. Learns the image's login user on the way."""
        begin = time.monotonic()
        last = "nothing tried yet"
        while time.monotonic() - begin < timeout:
            status = self.status(inst)
            if not status.state.active:
                raise InstanceNotRunning(
                    f"{inst.record.name} is {status.state} ({status.detail or 'no detail'})",
                    reason="not-running",
                )
            try:
                argv = self.ssh_argv(inst, ("true",), insecure=insecure)
            except (HostKeyUnknown, InstanceNotRunning) as exc:
                last = exc.message
                time.sleep(2)
                continue
            result = self.runner.run(argv, timeout=60, check=False)
            output = result.text + result.stderr.decode("utf-8", "replace")
            user = ssh.login_user(output)
            if user is not None:
                access = ssh.SshAccess.load(inst.path)
                ssh.SshAccess(user, access.public_keys).save(inst.path)
                continue
            if result.returncode == 0:
                host, port = self.address(inst)
                login = ssh.SshAccess.load(inst.path).user or "root"
                target = SshTarget(host, port, login)
                return WaitResult(inst.record.name, time.monotonic() - begin, target)
            last = output.strip().splitlines()[-1] if output.strip() else "ssh failed"
            time.sleep(2)
        raise GuestTimeout(
            f"ssh to {inst.record.name} did not answer within {timeout:.0f} s: {last}",
            reason="timeout",
        )
