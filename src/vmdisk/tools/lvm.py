"""lvm2 through the one runner: JSON reports (`--reportformat json`), sizes in bytes.

Every call names its volume group explicitly and passes sizes with a `b` suffix, so nothing
depends on lvm.conf's units. Failures surface as ToolError, which names the command.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vmdisk.errors import BackendError
from vmdisk.tools.runner import Runner

TIMEOUT = 300.0
_LV_FIELDS = "lv_name,vg_name,lv_size,lv_attr,pool_lv,origin,origin_size,data_percent,lv_path,zero"


@dataclass(frozen=True, slots=True)
class VolumeGroup:
    name: str
    size: int
    free: int


@dataclass(frozen=True, slots=True)
class LogicalVolume:
    vg: str
    name: str
    size: int  # what the device reads: a snapshot's is its origin's
    attr: str
    pool: str | None  # the thin pool a thin volume lives in
    origin: str | None  # the volume a snapshot was taken of
    data_percent: float | None  # thin volumes and pools: how much is allocated
    zeroes: bool  # thin pools: new blocks are zeroed when provisioned
    cow_size: int | None = None  # old-style snapshots: the exception store holding the data

    @property
    def path(self) -> Path:
        return Path("/dev") / self.vg / self.name

    @property
    def thin(self) -> bool:
        return self.attr[:1] == "V"

    @property
    def sparse(self) -> bool:
        """A snapshot of a virtual zero origin (`--type snapshot --virtualsize`)."""
        return self.cow_size is not None and (self.origin or "").endswith("_vorigin")

    @property
    def cow_device(self) -> Path:
        """The snapshot's exception store as device-mapper names it (dashes doubled)."""
        return Path("/dev/mapper") / f"{_dm(self.vg)}-{_dm(self.name)}-cow"

    @property
    def allocated(self) -> int | None:
        if self.cow_size is not None:
            return int(self.cow_size * (self.data_percent or 0) / 100)
        if self.data_percent is None:
            return self.size if not self.thin else None
        return int(self.size * self.data_percent / 100)


def _dm(name: str) -> str:
    return name.replace("-", "--")


def parse_lvs(text: str) -> list[LogicalVolume]:
    """`lvs --reportformat json --units b --nosuffix -o <_LV_FIELDS>` output."""
    return [_lv(row) for row in _report(text, "lv")]


def _lv(row: dict[str, str]) -> LogicalVolume:
    size = int(row["lv_size"] or 0)
    attr = row.get("lv_attr", "")
    # An old-style snapshot's lv_size is its exception store; the device reads its origin's.
    snapshot = attr[:1] in ("s", "S") and bool(row.get("origin_size"))
    return LogicalVolume(
        vg=row["vg_name"],
        name=row["lv_name"],
        size=int(row["origin_size"]) if snapshot else size,
        attr=attr,
        pool=row.get("pool_lv") or None,
        origin=(row.get("origin") or "").strip("[]") or None,
        data_percent=float(row["data_percent"]) if row.get("data_percent") else None,
        zeroes=row.get("zero", "") in ("zero", "1"),
        cow_size=size if snapshot else None,
    )


def parse_vgs(text: str) -> list[VolumeGroup]:
    return [
        VolumeGroup(row["vg_name"], int(row["vg_size"]), int(row["vg_free"]))
        for row in _report(text, "vg")
    ]


def _report(text: str, kind: str) -> list[dict[str, str]]:
    try:
        reports = json.loads(text)["report"]
        return [row for report in reports for row in report.get(kind, [])]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"unreadable lvm2 {kind}s report: {exc}") from exc


class Lvm:
    """The few lvm2 verbs the LVM backend needs."""

    def __init__(self, runner: Runner, timeout: float = TIMEOUT) -> None:
        self.runner = runner
        self.timeout = timeout

    def _run(self, *argv: str) -> str:
        return self.runner.run(list(argv), timeout=self.timeout).text

    def volume_group(self, vg: str) -> VolumeGroup | None:
        out = self.runner.run(
            [
                "vgs",
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "vg_name,vg_size,vg_free",
                vg,
            ],
            timeout=self.timeout,
            check=False,
        )
        if out.returncode != 0:
            return None
        found = parse_vgs(out.text)
        return found[0] if found else None

    def volumes(self, vg: str) -> list[LogicalVolume]:
        text = self._run(
            "lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", _LV_FIELDS, vg
        )
        return parse_lvs(text)

    def volume(self, vg: str, name: str) -> LogicalVolume | None:
        return next((lv for lv in self.volumes(vg) if lv.name == name), None)

    def create(self, vg: str, name: str, size: int, *, sparse: bool = False) -> None:
        """A thick volume, or with `sparse` Nova's snapshot-backed sparse volume: a 64 MiB
        exception store over a virtual zero origin. `--type snapshot` is explicit because
        lvm2 2.03 otherwise makes a thin pool `lvolN` for it, which lvremove leaves behind."""
        if sparse:
            self._run("lvcreate", "-y", "--type", "snapshot", "-L", "64m",
                      "--virtualsize", f"{size}b", "-n", name, vg)  # fmt: skip
        else:
            self._run("lvcreate", "-y", "-L", f"{size}b", "-n", name, vg)

    def create_thin(self, vg: str, pool: str, name: str, size: int) -> None:
        self._run("lvcreate", "-y", "-V", f"{size}b", "-T", f"{vg}/{pool}", "-n", name)

    def snapshot(self, vg: str, origin: str, name: str) -> None:
        """A thin snapshot, activated (-kn: no activation-skip flag, -ay: active now)."""
        self._run("lvcreate", "-y", "-s", "-kn", "-ay", "-n", name, f"{vg}/{origin}")

    def extend(self, vg: str, name: str, size: int) -> None:
        self._run("lvextend", "-y", "-L", f"{size}b", f"{vg}/{name}")

    def rename(self, vg: str, old: str, new: str) -> None:
        self._run("lvrename", vg, old, new)

    def set_read_only(self, vg: str, name: str) -> None:
        self._run("lvchange", "-pr", f"{vg}/{name}")

    def remove(self, vg: str, name: str) -> None:
        self._run("lvremove", "-y", f"{vg}/{name}")
