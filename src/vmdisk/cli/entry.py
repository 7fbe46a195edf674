"""The `vmdisk` console script: `vmdisk --version` answered before click is imported.

`--version` is how scripts and configuration management check an install; importing click
alone takes three times as long as starting Python (bench W1). Every other command line goes
to cli/main.py unchanged, and the text printed here is click's own version line.
"""

from __future__ import annotations

import sys

from vmdisk._version import __version__


def main() -> int:
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"vmdisk, version {__version__}\n")
        return 0
    from vmdisk.cli.main import main as full

    return full()


if __name__ == "__main__":
    sys.exit(main())
