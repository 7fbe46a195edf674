"""SIGKILL at random moments, at least 50 trials: nothing partial ever looks complete.

`make soak` runs the same harness with 200+ trials (SOAK=1 adds them here as well).
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.crash import Sources, run_trials
from tests.httpserver import Route, serve
from tests.images import MiB, convert

TRIALS = int(os.environ.get("CRASH_TRIALS", "250" if os.environ.get("SOAK") else "56"))
SEED = int(os.environ.get("CRASH_SEED", "20261124"))


def test_sigkill_anywhere_leaves_nothing_half_made(tmp_path: Path) -> None:
    raw = tmp_path / "img.raw"
    with open(raw, "wb") as fh:
        fh.write(os.urandom(3 * MiB))
        fh.truncate(12 * MiB)
    qcow2 = convert(raw, "raw", tmp_path / "img.qcow2", "qcow2")
    routes = {
        "/raw": Route(raw.read_bytes(), rate=12 * MiB),
        "/qcow2": Route(qcow2.read_bytes(), rate=6 * MiB),
    }
    with serve(routes) as srv:
        src = Sources(raw, qcow2, srv.url("/raw"), srv.url("/qcow2"))
        report = run_trials(tmp_path / "instances", src, TRIALS, SEED)
    assert report.problems == [], "\n".join(report.problems[:20])
    assert report.trials == TRIALS
    assert report.killed >= TRIALS // 3, report  # most trials really were killed mid-way
