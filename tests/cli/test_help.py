"""The help of every command: whole descriptions in the listings, every option explained, no spec talk."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from engine.cli.main import cli

# click formats help 2 columns narrower than the terminal: an 80-column terminal gets 78.
HELP_WIDTH = 80 - 2


def _commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


ALL_COMMANDS = sorted(_commands(cli), key=lambda item: item[0])
GROUPS = [((), cli), *((path, command) for path, command in ALL_COMMANDS if isinstance(command, click.Group))]


@pytest.mark.parametrize(
    ("path", "group"),
    GROUPS,
    ids=lambda value: " ".join(value) or "stockaj-rules" if isinstance(value, tuple) else "",
)
def test_a_listing_of_commands_shows_each_description_whole_on_an_80_column_terminal(
    path: tuple[str, ...], group: click.Group
) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=HELP_WIDTH)

    assert result.exit_code == 0, result.output
    listing = result.output.partition("Commands:\n")[2]
    assert listing, result.output
    assert "..." not in listing, listing
    for name in group.list_commands(click.Context(group)):
        assert re.search(rf"^  {re.escape(name)}  +\S", listing, re.MULTILINE), listing


@pytest.mark.parametrize(
    ("path", "command"),
    ALL_COMMANDS,
    ids=lambda value: " ".join(value) or "stockaj-rules" if isinstance(value, tuple) else "",
)
def test_every_option_says_what_it_does_and_no_help_sends_the_reader_to_the_spec(
    path: tuple[str, ...], command: click.Command
) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=HELP_WIDTH)

    assert result.exit_code == 0, result.output
    assert not re.search(r"\bspec\b|\bsection \d", result.output, re.IGNORECASE), result.output
    unexplained = [
        option.name
        for option in command.params
        if isinstance(option, click.Option) and not (option.help or "").strip()
    ]
    assert unexplained == []
