"""One of P5's processes: four creates in threads of one uncached image; prints what it did."""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.fixtures import host
from vmdisk.imagecache.store import ImageRequest
from vmdisk.model import InstanceSpec
from vmdisk.settings import Flavor
from vmdisk.tools.runner import CommandResult, Limits, SubprocessRunner


class CountingRunner(SubprocessRunner):
    """The real runner, counting qemu-img convert calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conversions = 0

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        limits: Limits | None = None,
        check: bool = True,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        if list(argv[:2]) == ["qemu-img", "convert"]:
            self.conversions += 1
        return super().run(argv, timeout=timeout, limits=limits, check=check, input=input, env=env)


def main() -> None:
    root, url, proc = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    h = host(root)
    runner = CountingRunner()
    h.runner = runner
    h.qemu.runner = runner  # shared by the intake and the provisioner: conversions counted
    done: list[str] = []

    def create(i: int) -> None:
        spec = InstanceSpec(f"s{proc}-{i}", str(uuid.uuid4()), Flavor("s", 1, 64, 1))
        h.create_instance(spec, ImageRequest(url))
        done.append(spec.name)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"created": len(done), "conversions": runner.conversions}))


if __name__ == "__main__":
    main()
