"""tools/ceph.py over the FAKE bindings (tests/fakeceph.py): URL and ceph.conf parsing, and
the Pool operations that move bytes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.fakeceph import FakeCeph
from vmdisk.errors import ToolNotFound
from vmdisk.tools.ceph import Cluster, Pool, monitors, parse_mon_host, parse_rbd_url
from vmdisk.units import MiB


@pytest.fixture
def ceph(monkeypatch: pytest.MonkeyPatch) -> FakeCeph:
    fake = FakeCeph()
    fake.pool("vms")
    monkeypatch.setitem(sys.modules, "rados", fake.rados)
    monkeypatch.setitem(sys.modules, "rbd", fake.rbd)
    return fake


def test_parse_rbd_url() -> None:
    assert parse_rbd_url("rbd://fsid/images/abc/snap") == ("fsid", "images", "abc", "snap")
    assert parse_rbd_url("rbd://fsid/images/abc") is None
    assert parse_rbd_url("rbd://fsid//abc/snap") is None
    assert parse_rbd_url("http://fsid/images/abc/snap") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a,b", (("a", 6789), ("b", 6789))),
        ("a:6790", (("a", 6790),)),
        ("v1:10.0.0.1:6789/0", (("10.0.0.1", 6789),)),
        ("[v2:10.0.0.1:3300,v1:10.0.0.1:6789]", (("10.0.0.1", 6789),)),
        ("[v2:10.0.0.1:3300]", (("10.0.0.1", 3300),)),
        ("", ()),
    ],
)
def test_parse_mon_host(raw: str, expected: tuple[tuple[str, int], ...]) -> None:
    assert parse_mon_host(raw) == expected


def test_monitors_reads_global_or_client(tmp_path: Path) -> None:
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nfsid = x\n[client]\nmon_host = m1:6789 m2\n")
    assert monitors(conf) == (("m1", 6789), ("m2", 6789))
    assert monitors(tmp_path / "missing.conf") == ()


def test_write_file_skips_holes_and_read_returns_the_bytes(ceph: FakeCeph, tmp_path: Path) -> None:
    src = tmp_path / "raw"
    with open(src, "wb") as fh:
        fh.write(b"head")
        fh.truncate(16 * MiB)
        fh.seek(12 * MiB)
        fh.write(b"tail")
    size = os.stat(src).st_size
    with Cluster(None, None) as cluster, cluster.pool("vms") as ioctx:
        pool = Pool(cluster, ioctx, "vms")
        pool.create("img", size)
        assert pool.exists("img") and not pool.exists("other")
        pool.write_file("img", src)
        assert pool.read("img", 0, 4) == b"head"
        assert pool.read("img", 12 * MiB, 4) == b"tail"
        assert pool.read("img", 8 * MiB, 4) == b"\0" * 4
        assert pool.names() == ["img"]
        assert pool.info("img").parent is None and pool.info("img").size == size
        pool.remove("img")
        pool.remove("img")  # already gone: nothing to do
    written = sum(n for _, _, _, n in ceph.writes)
    assert 8 <= written < 16 * MiB  # the hole in the middle was never written


def test_missing_bindings_are_tool_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rados", None)
    with pytest.raises(ToolNotFound):
        Cluster(None, None).__enter__()


def test_an_all_zero_fsid_right_after_connect_is_asked_again(
    ceph: FakeCeph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librados under load has answered the all-zero fsid before the monitor map arrived (the
    fake does so for its first three calls); the cluster's fsid is what it says next."""
    import vmdisk.tools.ceph as tools_ceph
    from tests.fakeceph import FakeRados

    real, calls = ceph.fsid, []

    def early_zero(self: FakeRados) -> str:
        calls.append(1)
        return "00000000-0000-0000-0000-000000000000" if len(calls) <= 3 else real

    monkeypatch.setattr(FakeRados, "get_fsid", early_zero)
    monkeypatch.setattr(tools_ceph, "FSID_POLL_INTERVAL", 0.001)
    with Cluster(None, None) as cluster:
        assert cluster.fsid == real and len(calls) == 4
