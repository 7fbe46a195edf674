"""A module imported on first attribute access, so heavy dependencies cost only their users.

requests (+ urllib3, charset_normalizer), oslo.utils (+ cryptography, via its LUKS inspector)
and pycdlib together take longer to import than most vmdisk commands take to run; a command
that reads no URL, inspects no image and writes no ISO should not pay for them (bench W1, W2).

    if TYPE_CHECKING:
        import requests
    else:
        requests = LazyModule("requests")

Attribute access (`requests.Session()`, `except requests.exceptions.Timeout`) imports the real
module through the normal import system, once, under its lock; annotations are never evaluated
(`from __future__ import annotations`), so they cost nothing either.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands in for module `name` until an attribute is first read."""

    __slots__ = ("_module", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not yet imported"
        return f"<lazy module {self._name!r}, {state}>"
