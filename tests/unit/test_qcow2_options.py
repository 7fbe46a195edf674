"""The qemu-img create options behind `[libvirt] qcow2_extended_l2`."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_qemu_img import LIMITS, FakeRunner
from vmdisk.tools.qemu_img import EXTENDED_L2_CLUSTER, QemuImg


def _options(**kw: object) -> list[str]:
    runner = FakeRunner()
    QemuImg(runner, LIMITS).create(
        Path("/i/disk"), "qcow2", 1 << 30, backing_file=Path("/b"), backing_format="raw", **kw
    )  # type: ignore[arg-type]
    argv = runner.seen[0][0]
    return argv[argv.index("-o") + 1].split(",") if "-o" in argv else []


def test_extended_l2_brings_128k_clusters() -> None:
    assert EXTENDED_L2_CLUSTER == 128 * 1024
    assert _options(extended_l2=True) == ["cluster_size=131072", "extended_l2=on"]


def test_a_base_cluster_size_is_kept() -> None:
    assert _options(extended_l2=True, cluster_size=65536) == [
        "cluster_size=65536",
        "extended_l2=on",
    ]
    assert _options(cluster_size=65536) == ["cluster_size=65536"]


def test_off_is_nova_layout() -> None:
    assert _options() == []
