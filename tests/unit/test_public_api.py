"""`vmdisk.__all__` is the public API: the whole error tree and every type crossing Host.

Generic on purpose: a new error class, a new Host method or a new field type in a dataclass a
caller receives shows up here without editing this file.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing

import vmdisk
from vmdisk import errors
from vmdisk.host import Host


def _vmdisk_classes(annotation: object, found: set[type]) -> None:
    """Classes defined in vmdisk inside an annotation, and inside their dataclass fields."""
    for arg in typing.get_args(annotation):
        _vmdisk_classes(arg, found)
    if inspect.isclass(annotation) and annotation.__module__.split(".")[0] == "vmdisk":
        if annotation in found:
            return
        found.add(annotation)
        if dataclasses.is_dataclass(annotation):
            for hint in typing.get_type_hints(annotation).values():
                _vmdisk_classes(hint, found)


def _host_types() -> set[type]:
    found: set[type] = set()
    for name, member in inspect.getmembers(Host):
        if name.startswith("_") and name != "__init__":
            continue
        func = member.fget if isinstance(member, property) else member
        if inspect.isfunction(func):
            for hint in typing.get_type_hints(func).values():
                _vmdisk_classes(hint, found)
    return found


def test_every_name_in_all_resolves() -> None:
    for name in vmdisk.__all__:
        assert hasattr(vmdisk, name), name
    assert len(set(vmdisk.__all__)) == len(vmdisk.__all__)


def test_the_whole_error_tree_is_exported() -> None:
    tree = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, errors.VmdiskError)
    }
    assert tree - set(vmdisk.__all__) == set()
    assert {"InternalError", "CephError", "RbdImageNotFound", "SettingsError"} <= tree


def test_every_type_crossing_host_is_exported() -> None:
    types = _host_types()
    assert {vmdisk.Settings, vmdisk.InstanceSpec, vmdisk.ImagesType, vmdisk.Interface} <= types
    missing = sorted(
        f"{t.__module__}.{t.__name__}" for t in types if t.__name__ not in vmdisk.__all__
    )
    assert missing == []
    for t in types:
        assert getattr(vmdisk, t.__name__) is t, f"{t.__name__} exported under a clashing name"
