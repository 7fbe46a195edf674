"""Typed fakes for the two seams: Runner and ImageSource. Canned answers are per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from vmdisk.imagecache.sources import Opened, SourceFacts
from vmdisk.tools.runner import CommandResult, Limits

Answer = Callable[[list[str]], CommandResult]


def ok(stdout: bytes | str = b"", returncode: int = 0) -> Answer:
    data = stdout.encode() if isinstance(stdout, str) else stdout

    def answer(argv: list[str]) -> CommandResult:
        return CommandResult(tuple(argv), returncode, data, b"", 0.0)

    return answer


@dataclass
class FakeRunner:
    """Answers by the first argv words; records every call with its limits."""

    answers: dict[tuple[str, ...], Answer] = field(default_factory=dict)
    calls: int = 0
    seen: list[tuple[list[str], Limits | None]] = field(default_factory=list)

    def spawn(self, argv: Sequence[str], *, output: Path | None = None) -> NoReturn:
        raise NotImplementedError("FakeRunner does not start processes")

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
        args = [str(a) for a in argv]
        self.calls += 1
        self.seen.append((args, limits))
        for n in range(len(args), 0, -1):
            answer = self.answers.get(tuple(args[:n]))
            if answer is not None:
                return answer(args)
        return CommandResult(tuple(args), 0, b"", b"", 0.0)


@dataclass
class FakeSource:
    """An in-memory image source; `cut_at` drops the stream once to test resume."""

    data: bytes
    name: str = "fake://image"
    opens: list[int] = field(default_factory=list)
    facts: SourceFacts = field(default_factory=SourceFacts)

    @property
    def display(self) -> str:
        return self.name

    def normalised(self) -> str:
        return self.name

    def resolve(self) -> SourceFacts:
        return self.facts

    def open(self, offset: int = 0) -> Opened:
        self.opens.append(offset)

        def chunks() -> Iterator[bytes]:
            for pos in range(offset, len(self.data), 65536):
                yield self.data[pos : pos + 65536]

        return Opened(chunks(), len(self.data), resumable=True)
