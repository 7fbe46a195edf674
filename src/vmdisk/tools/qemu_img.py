"""qemu-img, always told the format (-f) and never asked to guess, parsed from its JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmdisk.errors import ToolError, ToolLimitExceeded
from vmdisk.tools.runner import Limits, Runner

#: qemu-img names for the formats vmdisk reads or writes.
QEMU_FORMATS = frozenset({"raw", "qcow2", "vmdk", "vpc", "vhdx"})

#: The cluster size of overlays made with extended_l2: 32 subclusters of 4 KiB (a page).
EXTENDED_L2_CLUSTER = 128 * 1024


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What `qemu-img info --output=json` says, reduced to the facts we decide on."""

    format: str
    virtual_size: int
    actual_size: int | None = None
    cluster_size: int | None = None
    backing_file: str | None = None
    backing_format: str | None = None
    data_file: str | None = None
    encrypted: bool = False
    corrupt: bool = False
    create_type: str | None = None
    extent_files: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CheckResult:
    """`qemu-img check`: 0 clean, 2 corrupt, 3 only leaked clusters, 63 not supported."""

    returncode: int
    corruptions: int
    leaks: int
    check_errors: int

    @property
    def ok(self) -> bool:
        return self.returncode in (0, 3, 63) and self.corruptions == 0 and self.check_errors == 0


def parse_info(text: str) -> ImageInfo:
    try:
        data: dict[str, Any] = json.loads(text)
        specific = (data.get("format-specific") or {}).get("data") or {}
        extents = specific.get("extents") or []
        return ImageInfo(
            format=str(data["format"]),
            virtual_size=int(data["virtual-size"]),
            actual_size=data.get("actual-size"),
            cluster_size=data.get("cluster-size"),
            backing_file=data.get("backing-filename") or data.get("full-backing-filename"),
            backing_format=data.get("backing-filename-format"),
            data_file=specific.get("data-file"),
            encrypted=bool(data.get("encrypted", False)),
            corrupt=bool(specific.get("corrupt", False)),
            create_type=specific.get("create-type"),
            extent_files=tuple(str(e.get("filename", "")) for e in extents),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ToolError(f"qemu-img info printed something unexpected: {exc}") from exc


def parse_check(returncode: int, text: str) -> CheckResult:
    try:
        data: dict[str, Any] = json.loads(text) if text.strip() else {}
    except ValueError:
        data = {}
    return CheckResult(
        returncode=returncode,
        corruptions=int(data.get("corruptions", 0)) + int(data.get("corruptions-fixed", 0)),
        leaks=int(data.get("leaks", 0)),
        check_errors=int(data.get("check-errors", 1 if returncode == 1 else 0)),
    )


class QemuImg:
    """Argv building for each verb. `limits` applies to calls that parse untrusted bytes."""

    def __init__(self, runner: Runner, limits: Limits, timeout: float = 3600.0) -> None:
        self.runner = runner
        self.limits = limits
        self.timeout = timeout

    def info(self, path: Path | str, fmt: str) -> ImageInfo:
        argv = ["qemu-img", "info", "-f", fmt, "--force-share", "--output=json", str(path)]
        result = self.runner.run(argv, limits=self.limits, timeout=self.timeout)
        return parse_info(result.text)

    def check(self, path: Path, fmt: str) -> CheckResult:
        argv = ["qemu-img", "check", "-f", fmt, "--force-share", "--output=json", str(path)]
        result = self.runner.run(argv, limits=self.limits, timeout=self.timeout, check=False)
        if result.returncode < 0:  # killed: by its CPU or memory limit, as far as we know
            raise ToolLimitExceeded(
                f"qemu-img check was killed by signal {-result.returncode} "
                f"(limits: cpu {self.limits.cpu_seconds} s, "
                f"address space {self.limits.address_space} bytes)",
                argv=argv,
                returncode=result.returncode,
                reason="resource-limit",
            )
        if result.returncode not in (0, 1, 2, 3, 63):
            raise ToolError(f"qemu-img check failed with exit code {result.returncode}")
        return parse_check(result.returncode, result.text)

    def measure_data(self, path: Path, fmt: str) -> int:
        """Bytes of data a sparse copy of the image needs: what `measure -O qcow2` requires.

        `-O raw` would answer the virtual size, since qemu counts a raw file as allocated;
        the raw base is written sparsely, so the qcow2 figure is the honest one.
        """
        argv = ["qemu-img", "measure", "-f", fmt, "-O", "qcow2", "--output=json", str(path)]
        result = self.runner.run(argv, limits=self.limits, timeout=self.timeout)
        try:
            return int(json.loads(result.text)["required"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ToolError(f"qemu-img measure printed something unexpected: {exc}") from exc

    def create(
        self,
        path: Path,
        fmt: str,
        size: int | None,
        *,
        backing_file: Path | None = None,
        backing_format: str | None = None,
        cluster_size: int | None = None,
        extended_l2: bool = False,
    ) -> None:
        """`extended_l2` (qcow2 only, qemu >= 5.2 to read): 32 subclusters per cluster, so a
        guest's first small write into a cluster copies and allocates one subcluster, not the
        whole cluster; with 128 KiB clusters (the default then) a subcluster is 4 KiB."""
        argv = ["qemu-img", "create", "-q", "-f", fmt]
        if backing_file is not None:
            if backing_format is None:
                raise ValueError("a backing file needs an explicit backing format")
            argv += ["-b", str(backing_file), "-F", backing_format]
        options = []
        if extended_l2:
            options += [f"cluster_size={cluster_size or EXTENDED_L2_CLUSTER}", "extended_l2=on"]
        elif cluster_size:
            options.append(f"cluster_size={cluster_size}")
        if options:
            argv += ["-o", ",".join(options)]
        argv.append(str(path))
        if size is not None:
            argv.append(str(size))
        self.runner.run(argv, timeout=self.timeout)

    def convert(
        self,
        src: Path,
        src_format: str,
        dst: Path,
        dst_format: str,
        *,
        cache_mode: str = "writeback",
        limits: Limits | None = None,
    ) -> None:
        argv = ["qemu-img", "convert", "-q", "-t", cache_mode, "-f", src_format]
        argv += ["-O", dst_format, str(src), str(dst)]
        self.runner.run(argv, limits=limits or self.limits, timeout=self.timeout)

    def resize(self, path: Path, fmt: str, size: int) -> None:
        # -f always: a guest can write a qcow2 header into its raw disk (CVE-2026-24708).
        argv = ["qemu-img", "resize", "-q", "-f", fmt, str(path), str(size)]
        self.runner.run(argv, timeout=self.timeout)
