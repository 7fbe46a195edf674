"""`vmdisk` command line: global flags, settings read once, errors mapped to exit codes here only.

Exit codes: 0 success, 1 vmdisk error, 2 usage, 3 settings, 4 image refused, 130 interrupted.
A bug (InternalError, or any exception outside the tree) is exit 1 and one line, never a usage
error; -v adds the traceback.

Commands are loaded lazily: `vmdisk --version`, `--help` and each command import only the module
that defines the command they run (startup is most of a short command's time; bench W1). Each
command module keeps a `register(cli)` that adds its commands; `COMMANDS` below maps every
top-level command name to that module and its one-line summary, so `--help` lists them without
importing anything. Adding a command is one line in `COMMANDS`, e.g.

    "doctor": ("vmdisk.cli.doctor", "Check this host's tools and settings."),

(tests/unit/test_cli_startup.py fails if a registered command is missing from the table or its
summary differs from the command's docstring.)
"""

from __future__ import annotations

import importlib
import json
import logging
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import click

from vmdisk._version import __version__
from vmdisk.cli.context import AppContext
from vmdisk.errors import InternalError, Interrupted, VmdiskError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Top-level command -> (module whose register(cli) adds it, summary shown by --help).
COMMANDS: dict[str, tuple[str, str]] = {
    "boot": (
        "vmdisk.cli.boot",
        "Smoke-test the instance: boot it (TCG unless KVM works), follow its console, stop it.",
    ),
    "cache": ("vmdisk.cli.images", "Inspect and prune the _base cache."),
    "clone": (
        "vmdisk.cli.images",
        "A new instance NEW whose disks start as NAME's: new uuid, MAC and config drive.",
    ),
    "console": (
        "vmdisk.cli.vm",
        "Attach to the serial console (Ctrl-] leaves), or --follow its log.",
    ),
    "create": (
        "vmdisk.cli.instances",
        "Create instance NAME: cache the image, then make its disks and directory.",
    ),
    "delete": ("vmdisk.cli.instances", "Delete an instance directory (never anything in _base)."),
    "doctor": (
        "vmdisk.cli.doctor",
        "Report stale locks, build and .deleting-* directories, name entries, old temporaries.",
    ),
    "image": (
        "vmdisk.cli.images",
        "Fetch, list, name, refresh and remove the images in the _base cache.",
    ),
    "ip": (
        "vmdisk.cli.vm",
        "The guest's address: its DHCP lease (libvirt), or 127.0.0.1 and the forwarded port.",
    ),
    "list": ("vmdisk.cli.instances", "List instances on this host."),
    "rescue": (
        "vmdisk.cli.instances",
        "Create disk.rescue (and kernel.rescue/ramdisk.rescue); the instance's disk is untouched.",
    ),
    "resize": ("vmdisk.cli.instances", "Grow the root (and ephemeral) disk."),
    "show": (
        "vmdisk.cli.instances",
        "Show an instance and its disks (format, sizes, backing file).",
    ),
    "snapshot": (
        "vmdisk.cli.images",
        "Turn instance NAME's root disk into a new raw image in _base (refused while it runs); "
        "`vmdisk create --image IMAGE_ID` then uses it.",
    ),
    "ssh": (
        "vmdisk.cli.vm",
        "ssh into the guest (`vmdisk ssh NAME -- CMD ...`), checking the host key it printed.",
    ),
    "start": (
        "vmdisk.cli.vm",
        "Start the instance's guest, detached (its disks stay where create made them).",
    ),
    "status": (
        "vmdisk.cli.vm",
        "running, paused, stopped, crashed (or unknown when libvirt does not answer).",
    ),
    "stop": (
        "vmdisk.cli.vm",
        "Stop the guest: ACPI power button, wait, and destroy only after --timeout or --force.",
    ),
    "unrescue": ("vmdisk.cli.instances", "Remove disk.rescue and leave rescue mode."),
    "wait": ("vmdisk.cli.vm", "Wait until the guest answers ssh."),
    "xml": ("vmdisk.cli.boot", "Print the instance's libvirt domain XML."),
}

# Modules whose register(cli) adds options to commands of the modules listed (oci:// flags).
AUGMENTS: dict[str, tuple[str, ...]] = {
    "vmdisk.cli.oci": ("vmdisk.cli.images", "vmdisk.cli.instances"),
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is looked up to run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: set[str] = set()

    def load(self, module: str) -> None:
        if module not in self._loaded:
            self._loaded.add(module)
            importlib.import_module(module).register(self)
            for extra, targets in AUGMENTS.items():
                if module in targets:  # register() is idempotent: run it after each target
                    importlib.import_module(extra).register(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.load(COMMANDS[cmd_name][0])
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from COMMANDS' summaries, importing no command module."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            cmd = self.commands.get(name) or click.Command(name, help=COMMANDS[name][1])
            if not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--config", type=click.Path(path_type=Path, dir_okay=False), help="TOML settings file."
)
@click.option(
    "--instances-path",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where instances and the _base cache live.",
)
@click.option("--json", "json_mode", is_flag=True, help="Print one JSON document on stdout.")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.version_option(__version__, prog_name="vmdisk")
@click.pass_context
def cli(
    ctx: click.Context,
    config: Path | None,
    instances_path: Path | None,
    json_mode: bool,
    verbose: int,
) -> None:
    """Build a VM's disks the way Nova's libvirt driver does: cache, overlays, config drive."""
    from vmdisk.cli.output import Output

    if instances_path is not None:
        instances_path = instances_path.absolute()
    ctx.obj = AppContext(config, instances_path, Output(json_mode), verbose)
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


def _report(error: dict[str, Any], json_mode: bool, hint: str | None = None) -> None:
    if json_mode:
        sys.stdout.write(json.dumps({"error": error}) + "\n")
    else:
        sys.stderr.write(f"vmdisk: error: {error['message']}\n")
        if hint:
            sys.stderr.write(f"hint: {hint}\n")


def _report_internal(exc: Exception, json_mode: bool, verbose: bool) -> int:
    """One line (whitespace folded) naming the exception; the traceback only with -v."""
    if verbose:
        traceback.print_exc()
    text = " ".join(str(exc).split())
    kind = "" if isinstance(exc, InternalError) else f"{type(exc).__name__}: "
    message = f"internal error: {kind}{text}"
    if not verbose and not json_mode:
        message += " (a bug: run again with -v for the traceback and report it)"
    _report({"type": "InternalError", "message": message, "reason": "internal"}, json_mode)
    return EXIT_ERROR


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted("interrupted by SIGTERM", reason="interrupted")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    json_mode = "--json" in args
    verbose = any(a in ("-v", "--verbose") or a.startswith("-vv") for a in args)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = cli.main(args=args, prog_name="vmdisk", standalone_mode=False)
        return result if isinstance(result, int) else EXIT_OK
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        _report(
            {"type": "UsageError", "message": exc.format_message(), "reason": "usage"}, json_mode
        )
        return EXIT_USAGE
    except (click.Abort, KeyboardInterrupt):
        _report(
            {"type": "Interrupted", "message": "interrupted", "reason": "interrupted"}, json_mode
        )
        return EXIT_INTERRUPTED
    except InternalError as exc:
        return _report_internal(exc, json_mode, verbose)
    except VmdiskError as exc:
        if verbose:
            traceback.print_exc()
        _report(exc.to_dict(), json_mode, exc.hint)
        return exc.exit_code
    except click.ClickException as exc:
        _report(
            {"type": type(exc).__name__, "message": exc.format_message(), "reason": None}, json_mode
        )
        return exc.exit_code
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as exc:
        return _report_internal(exc, json_mode, verbose)


if __name__ == "__main__":
    sys.exit(main())
