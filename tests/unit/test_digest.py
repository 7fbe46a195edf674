"""The base digest (imagecache/digest.py): a function of the bytes alone, holes for free."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from vmdisk.imagecache.digest import LEAF, TAG, TreeDigest, file_digest, matches, plain_sha256

MiB = 1024 * 1024


def _stream(data: bytes, step: int) -> str:
    tree = TreeDigest()
    for pos in range(0, len(data), step):
        tree.update(data[pos : pos + step])
    return tree.hexdigest()


def _layout(size: int, blobs: dict[int, bytes]) -> bytes:
    data = bytearray(size)
    for offset, blob in blobs.items():
        data[offset : offset + len(blob)] = blob
    return bytes(data)


LAYOUTS = {
    "empty": _layout(0, {}),
    "short": _layout(1000, {10: b"x"}),
    "all-zero-tail": _layout(3 * MiB + 123, {}),
    "data-across-leaves": _layout(5 * MiB + 7, {MiB - 3: os.urandom(9), 4 * MiB: b"\x01"}),
    "data-in-tail": _layout(2 * MiB + 5, {2 * MiB + 4: b"z"}),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_any_chunking_and_the_sparse_file_agree(name: str, tmp_path: Path) -> None:
    data = LAYOUTS[name]
    expected = _stream(data, LEAF)
    for step in (1, 4095, 4096, LEAF - 1, LEAF + 1, 3 * LEAF):
        if step == 1 and len(data) > 4096:
            continue
        assert _stream(data, step) == expected, step
    path = tmp_path / "f.raw"
    with open(path, "wb") as fh:  # only the non-zero 4 KiB blocks are written: holes elsewhere
        for pos in range(0, len(data), 4096):
            block = data[pos : pos + 4096]
            if block.strip(b"\0"):
                fh.seek(pos)
                fh.write(block)
        fh.truncate(len(data))
    assert path.read_bytes() == data
    assert file_digest(path) == expected
    assert expected.startswith(TAG)


def test_allocated_zeros_and_holes_digest_alike(tmp_path: Path) -> None:
    dense, sparse = tmp_path / "dense", tmp_path / "sparse"
    dense.write_bytes(bytes(4 * MiB) + b"end")
    with open(sparse, "wb") as fh:
        fh.seek(4 * MiB)
        fh.write(b"end")
    assert os.stat(sparse).st_blocks < os.stat(dense).st_blocks
    assert file_digest(dense) == file_digest(sparse)


def test_one_byte_or_one_trailing_zero_changes_it() -> None:
    base = _layout(3 * MiB, {MiB: b"abc"})
    digests = {
        _stream(base, LEAF),
        _stream(base[:MiB] + b"abd" + base[MiB + 3 :], LEAF),
        _stream(base + b"\0", LEAF),
        _stream(base[:-1], LEAF),
        _stream(bytes(3 * MiB), LEAF),
    }
    assert len(digests) == 5


def test_a_huge_hole_is_counted_not_hashed(tmp_path: Path) -> None:
    path = tmp_path / "huge.raw"
    with open(path, "wb") as fh:
        fh.truncate(4 * 1024**4)  # 4 TiB, nothing allocated: hashing zeros would take an hour
        fh.seek(2 * 1024**4)
        fh.write(b"data")
    tree = TreeDigest()
    tree.zeros(2 * 1024**4)
    tree.update(b"data" + bytes(LEAF - 4))
    tree.zeros(2 * 1024**4 - LEAF)
    assert file_digest(path) == tree.hexdigest()


def test_matches_checks_old_plain_records_and_new_ones(tmp_path: Path) -> None:
    path = tmp_path / "b.raw"
    path.write_bytes(b"payload" + bytes(2 * MiB))
    plain = hashlib.sha256(path.read_bytes()).hexdigest()
    assert plain_sha256(path) == plain
    assert matches(path, plain) == (True, plain)
    assert matches(path, file_digest(path))[0]
    path.write_bytes(b"paylo4d" + bytes(2 * MiB))
    assert not matches(path, plain)[0]
    assert matches(path, TAG + "0" * 64)[0] is False
