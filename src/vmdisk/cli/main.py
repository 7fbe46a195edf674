"""`vmdisk` command line: global flags, settings read once, errors mapped to exit codes here only.

Exit codes: 0 success, 1 vmdisk error, 2 usage, 3 settings, 4 image refused, 130 interrupted.
A bug (InternalError, or any exception outside the tree) is exit 1 and one line, never a usage
error; -v adds the traceback.
"""

from __future__ import annotations

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
from vmdisk.cli.output import Output
from vmdisk.errors import InternalError, Interrupted, VmdiskError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
    if instances_path is not None:
        instances_path = instances_path.absolute()
    ctx.obj = AppContext(config, instances_path, Output(json_mode), verbose)
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


def _register() -> None:
    from vmdisk.cli import boot, images, instances, oci, vm

    images.register(cli)
    instances.register(cli)
    boot.register(cli)
    vm.register(cli)
    from vmdisk.cli import doctor

    doctor.register(cli)
    oci.register(cli)  # after the others: it adds flags to their pulling commands


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


_register()

if __name__ == "__main__":
    sys.exit(main())
