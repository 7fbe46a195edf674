"""What the CLI prints: one JSON document on stdout with --json, rich text otherwise.

Progress bars and logs always go to stderr, so stdout stays parseable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vmdisk.progress import NoProgress
from vmdisk.progress import Progress as ProgressProtocol


class Output:
    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        # Not a terminal: rich would assume 80 columns and cut paths; logs and pipes want it all.
        width = None if sys.stdout.isatty() else 200
        self.out = Console(highlight=False, soft_wrap=True, width=width)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def emit(self, data: Any, human: Callable[[Console], None] | None = None) -> None:
        if self.json_mode:
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
            sys.stdout.flush()
        elif human is not None:
            human(self.out)
        else:
            self.out.print_json(json.dumps(data, default=str))

    def progress(self) -> ProgressProtocol:
        if self.json_mode or not sys.stderr.isatty():
            return NoProgress()
        return RichProgress(self.err)


class RichProgress:
    """A rich bar on stderr: bytes with speed for downloads, a spinner when size is unknown."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bar: Progress | None = None
        self._task: Any = None

    def start(self, label: str, total: int | None) -> None:
        self.done()
        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
        if total:
            columns += [BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
        self._bar = Progress(*columns, console=self.console, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(label, total=total)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
