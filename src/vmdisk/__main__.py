"""`python -m vmdisk` is the same as the `vmdisk` command."""

import sys

from vmdisk.cli.main import main

sys.exit(main())
