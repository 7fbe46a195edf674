"""A FAKE lvm2 for unit tests: a Runner that keeps one volume group in memory.

It answers the commands vmdisk's lvm2 wrapper runs (vgs/lvs JSON reports, lvcreate in its
thick, sparse, thin and snapshot forms, lvextend, lvrename, lvchange, lvremove) and records
everything else it is asked to run (qemu-img, mkfs, blkdiscard, shred) without running it.
The real lvm2 runs in the LVM guest tier (tests/lvm).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from vmdisk.errors import ToolError
from vmdisk.tools.runner import CommandResult, Limits


@dataclass
class FakeVolume:
    size: int
    attr: str = "-wi-a-----"
    pool: str = ""
    origin: str = ""
    zero: bool = False
    data_percent: str = ""


@dataclass
class FakeLvm2:
    vg: str = "vg0"
    vg_size: int = 100 << 30
    volumes: dict[str, FakeVolume] = field(default_factory=dict)
    other: list[list[str]] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)

    def add_pool(self, name: str = "pool", size: int = 50 << 30, zero: bool = True) -> None:
        self.volumes[name] = FakeVolume(size, "twi-aotz--", zero=zero, data_percent="0.00")

    def spawn(self, argv: Sequence[str], *, output: Path | None = None) -> NoReturn:
        raise NotImplementedError("FakeLvm2 does not start processes")

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        limits: Limits | None = None,
        check: bool = True,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        args = [str(a) for a in argv]
        self.calls.append(args)
        handler = getattr(self, "_" + args[0], None)
        if handler is None:
            self.other.append(args)
            return _ok(args)
        try:
            return _ok(args, handler(args[1:]))
        except KeyError as exc:
            if not check:
                return CommandResult(tuple(args), 5, b"", str(exc).encode(), 0.0)
            raise ToolError(f"{args[0]} failed: {exc}", argv=args, returncode=5) from exc

    def _vgs(self, args: list[str]) -> str:
        if args[-1] != self.vg:
            raise KeyError(f"volume group {args[-1]} not found")
        used = sum(v.size for v in self.volumes.values() if not v.pool)
        row = {
            "vg_name": self.vg,
            "vg_size": str(self.vg_size),
            "vg_free": str(self.vg_size - used),
        }
        return json.dumps({"report": [{"vg": [row]}]})

    def _lvs(self, args: list[str]) -> str:
        rows = [
            {
                "lv_name": name,
                "vg_name": self.vg,
                "lv_size": str(v.size),
                "lv_attr": v.attr,
                "pool_lv": v.pool,
                "origin": v.origin,
                "data_percent": v.data_percent,
                "lv_path": f"/dev/{self.vg}/{name}",
                "zero": "zero" if v.zero else "",
            }
            for name, v in sorted(self.volumes.items())
        ]
        return json.dumps({"report": [{"lv": rows}]})

    def _lvcreate(self, args: list[str]) -> str:
        name = args[args.index("-n") + 1]
        if name in self.volumes:
            raise KeyError(f"{name} exists")
        if "-s" in args:
            origin = args[-1].split("/", 1)[1]
            parent = self.volumes[origin]
            self.volumes[name] = FakeVolume(
                parent.size, "Vwi-a-tz--", parent.pool, origin, data_percent="0.01"
            )
        elif "-T" in args:
            pool = args[args.index("-T") + 1].split("/", 1)[1]
            if pool not in self.volumes:
                raise KeyError(f"thin pool {pool} not found")
            size = _bytes(args[args.index("-V") + 1])
            self.volumes[name] = FakeVolume(size, "Vwi-a-tz--", pool, data_percent="0.00")
        elif "--virtualsize" in args:
            self.volumes[name] = FakeVolume(
                _bytes(args[args.index("--virtualsize") + 1]), "swi-a-s---"
            )
        else:
            self.volumes[name] = FakeVolume(_bytes(args[args.index("-L") + 1]))
        return ""

    def _lvextend(self, args: list[str]) -> str:
        self._lv(args[-1]).size = _bytes(args[args.index("-L") + 1])
        return ""

    def _lvrename(self, args: list[str]) -> str:
        self.volumes[args[2]] = self.volumes.pop(args[1])
        return ""

    def _lvchange(self, args: list[str]) -> str:
        vol = self._lv(args[-1])
        vol.attr = vol.attr[0] + "r" + vol.attr[2:]
        return ""

    def _lvremove(self, args: list[str]) -> str:
        name = args[-1].split("/", 1)[1]
        del self.volumes[name]
        return ""

    def _lv(self, spec: str) -> FakeVolume:
        return self.volumes[spec.split("/", 1)[1]]


def _bytes(text: str) -> int:
    assert text.endswith("b"), f"sizes must be given in bytes, got {text!r}"
    return int(text[:-1])


def _ok(argv: list[str], out: str = "") -> CommandResult:
    return CommandResult(tuple(argv), 0, out.encode(), b"", 0.0)
