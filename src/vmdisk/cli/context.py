"""Per-invocation CLI state: global flags, and Settings and Host built once, lazily.

Host and Settings are imported when first asked for, not at import time: a command that needs
neither (--version, --help) must not pay for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vmdisk.errors import InternalError

if TYPE_CHECKING:
    from vmdisk.cli.output import Output
    from vmdisk.host import Host
    from vmdisk.settings import Settings


@dataclass
class AppContext:
    """Per-invocation state handed to every command through click's context."""

    config: Path | None
    instances_path: Path | None
    output: Output
    verbose: int
    _settings: Settings | None = None
    _host: Host | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from vmdisk.settings import load_settings

            overrides = {
                "instances_path": str(self.instances_path) if self.instances_path else None
            }
            self._settings = load_settings(self.config, os.environ, overrides)
        return self._settings

    @property
    def host(self) -> Host:
        if self._host is None:
            from vmdisk.host import Host

            self._host = Host(self.settings, progress=self.output.progress())
        return self._host


def app(ctx: click.Context) -> AppContext:
    obj = ctx.find_object(AppContext)
    if obj is None:
        raise InternalError("a command ran outside the vmdisk group (no application context)")
    return obj
