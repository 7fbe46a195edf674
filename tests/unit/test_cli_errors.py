"""Error documents and exit codes, through the real CLI entry point (no process started)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from vmdisk.cli.context import app
from vmdisk.cli.main import cli, main
from vmdisk.errors import InternalError, InvalidRequest, VmdiskError


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def json_error(out: str) -> dict[str, object]:
    doc = json.loads(out)
    assert set(doc) == {"error"}
    assert set(doc["error"]) == {"type", "message", "reason"}
    return doc["error"]  # type: ignore[no-any-return]


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and "vmdisk, version" in out
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "create" in out and "image" in out


def test_usage_error_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--json", "create")
    assert code == 2
    assert json_error(out)["type"] == "UsageError"
    code, _, err = run(capsys, "no-such-command")
    assert code == 2 and "Traceback" not in err


def test_settings_error_is_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("instances_pth = '/x'\n")
    code, out, _ = run(capsys, "--json", "--config", str(cfg), "list")
    assert code == 3
    error = json_error(out)
    assert error["type"] == "SettingsError" and "instances_path" in str(error["message"])
    code, _, err = run(capsys, "--config", str(cfg), "list")
    assert code == 3 and err.startswith("vmdisk: error:") and "Traceback" not in err


def test_refused_image_is_exit_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # gzip bytes under a name that does not say .gz: refused (a .gz name is decompressed)
    archive = tmp_path / "image.qcow2"
    archive.write_bytes(gzip.compress(b"\0" * 100000))
    inst = tmp_path / "inst"
    code, out, _ = run(
        capsys, "--json", "--instances-path", str(inst), "image", "fetch", str(archive)
    )
    assert code == 4
    error = json_error(out)
    assert error == {"type": "UnsafeImage", "reason": "not-an-image", "message": error["message"]}
    assert [p.name for p in (inst / "_base").iterdir()] == []


def test_not_found_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--json", "--instances-path", str(tmp_path), "show", "nope")
    assert code == 1 and json_error(out)["type"] == "InstanceNotFound"
    code, out, _ = run(
        capsys,
        "--json",
        "--instances-path",
        str(tmp_path),
        "image",
        "fetch",
        str(tmp_path / "missing.img"),
    )
    assert code == 1 and json_error(out)["reason"] == "not-found"


@pytest.mark.parametrize("name", ["../x", "/abs", "..", "-rf", "a,b", "x" * 300, "w\u0435b"])
def test_bad_names_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    inst = tmp_path / "inst"
    code, out, _ = run(
        capsys,
        "--json",
        "--instances-path",
        str(inst),
        "create",
        name,
        "--image",
        "/nonexistent",
        "--flavor",
        "m1.tiny",
    )
    assert code == 2
    # A leading '-' never reaches the name check: click already reads it as an option.
    assert json_error(out)["reason"] == ("usage" if name.startswith("-") else "bad-name")
    assert not inst.exists()


def test_list_json_on_empty_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--json", "--instances-path", str(tmp_path), "list")
    assert code == 0 and json.loads(out) == [] and err == ""


def test_injection_is_off_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = tmp_path / "motd"
    payload.write_text("hi")
    inst = tmp_path / "inst"
    code, out, _ = run(
        capsys,
        "--json",
        "--instances-path",
        str(inst),
        "create",
        "vm",
        "--image",
        "/nonexistent",
        "--flavor",
        "m1.tiny",
        "--inject-file",
        f"/etc/motd={payload}",
    )
    assert code == 2
    assert json_error(out)["reason"] == "injection-off"
    assert not inst.exists()


def test_bad_network_setting_is_exit_3_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "vmdisk.toml"
    cfg.write_text(f'instances_path = "{tmp_path}"\n[libvirt]\nnetwork = "bogus"\n')
    code, out, err = run(capsys, "--config", str(cfg), "list")
    assert code == 3 and out == ""
    assert err.splitlines() == [
        f"vmdisk: error: {cfg}: [libvirt] network: network 'bogus' must be none, user or "
        "bridge:NAME"
    ]
    code, out, _ = run(capsys, "--json", "--config", str(cfg), "list")
    assert code == 3
    assert json_error(out)["type"] == "SettingsError"


@pytest.fixture
def failing_command() -> Iterator[None]:
    """A throwaway subcommand that raises what its argument names, removed afterwards."""

    @click.command("fail-for-test")
    @click.argument("kind")
    def fail(kind: str) -> None:
        if kind == "bug":
            raise RuntimeError("first line\n  second line")
        if kind == "internal":
            raise InternalError("an invariant broke")
        raise click.UsageError("bad flag")

    cli.add_command(fail)
    try:
        yield
    finally:
        cli.commands.pop("fail-for-test")


@pytest.mark.usefixtures("failing_command")
def test_bugs_are_one_line_exit_1_not_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "fail-for-test", "bug")
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("vmdisk: error: internal error: RuntimeError: first line second line")
    assert "-v" in err and "Traceback" not in err
    code, out, err = run(capsys, "-v", "fail-for-test", "bug")
    assert code == 1 and "Traceback" in err
    code, out, _ = run(capsys, "--json", "fail-for-test", "internal")
    assert code == 1
    assert json_error(out) == {
        "type": "InternalError",
        "message": "internal error: an invariant broke",
        "reason": "internal",
    }
    code, out, _ = run(capsys, "--json", "fail-for-test", "usage")
    assert code == 2 and json_error(out)["type"] == "UsageError"


def test_programmer_errors_are_not_usage_errors() -> None:
    assert issubclass(InternalError, VmdiskError)
    assert not issubclass(InternalError, InvalidRequest)
    assert InternalError("x").exit_code == 1 and InternalError("x").reason == "internal"
    with pytest.raises(InternalError):
        app(click.Context(click.Command("orphan")))
