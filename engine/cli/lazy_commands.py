"""A click group whose commands may live in modules imported only when one of them runs.

The operator's commands need the server stack (uvicorn, arq, Redis, SQLAlchemy, Quart,
Prometheus): importing it costs more than a rule author's `check` itself. Registered by
"module:attribute", such a command is imported when it is invoked, or when `--help` lists
it; the rule author's commands never pay for it (tests/cli/test_imports.py pins that).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click


class LazyGroup(click.Group):
    """A `click.Group` that also knows commands by "module:attribute", imported on first use."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            self.add_command(self._import(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def _import(self, name: str) -> click.Command:
        module_name, _, attribute = self.lazy_commands[name].partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy_commands[name]} is {type(command).__name__}, not a click command")
        return command
