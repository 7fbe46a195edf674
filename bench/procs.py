"""Whole processes timed from outside: hyperfine when installed (Debian), else our own loop.

A user never runs vmdisk in-process: interpreter start, imports and exit are part of every
command, so W1-W3 time the `vmdisk` executable itself, against floors timed the same way.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def vmdisk_argv(*args: str) -> list[str]:
    """The installed console script, as a user runs it (falls back to -m vmdisk)."""
    script = VENV_BIN / "vmdisk"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "vmdisk", *args]


def time_command(argv: list[str], runs: int, prepare: list[str] | None = None) -> list[float]:
    """Wall seconds of `runs` executions (after one warm-up), `prepare` run untimed before each."""
    if shutil.which("hyperfine"):
        return _hyperfine(argv, runs, prepare)
    return _loop(argv, runs, prepare)


def tool() -> str:
    return "hyperfine" if shutil.which("hyperfine") else "perf_counter around subprocess.run"


def _hyperfine(argv: list[str], runs: int, prepare: list[str] | None) -> list[float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = ["hyperfine", "-N", "--style", "none", "--warmup", "1", "--runs", str(runs)]
        cmd += ["--export-json", out.name]
        if prepare is not None:
            cmd += ["--prepare", shlex.join(prepare)]
        cmd.append(shlex.join(argv))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        data = json.loads(Path(out.name).read_text())
    return [float(t) for t in data["results"][0]["times"]]


def _loop(argv: list[str], runs: int, prepare: list[str] | None) -> list[float]:
    samples = []
    for i in range(runs + 1):
        if prepare is not None:
            subprocess.run(prepare, check=False, capture_output=True)
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        if i:  # the first run warms the page cache, as hyperfine's --warmup does
            samples.append(time.perf_counter() - start)
    return samples
