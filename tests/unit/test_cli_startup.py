"""The lazy command table of cli/main.py agrees with what the command modules register."""

from __future__ import annotations

from vmdisk.cli import main as cli_main


def test_every_registered_command_is_in_the_table_with_its_summary() -> None:
    group = cli_main.LazyGroup(name="probe")
    for module in {m for m, _ in cli_main.COMMANDS.values()}:
        group.load(module)
    assert set(group.commands) == set(cli_main.COMMANDS)
    for name, cmd in group.commands.items():
        assert cmd.get_short_help_str(1000) == cli_main.COMMANDS[name][1], name


def test_a_command_is_loaded_only_when_looked_up() -> None:
    group = cli_main.LazyGroup(name="probe")
    assert group.commands == {}
    assert group.get_command(None, "list") is not None  # type: ignore[arg-type]
    assert "create" in group.commands  # the whole module registered, once
    assert group.get_command(None, "no-such-command") is None  # type: ignore[arg-type]


def test_an_unknown_command_is_still_a_usage_error() -> None:
    assert cli_main.main(["no-such-command"]) == cli_main.EXIT_USAGE
