"""The registry of action types: built-in and third-party plugins, found the same way.

Every action type, ours included, is declared under the `stockaj_rules.actions`
entry-point group in its package's metadata (see our `pyproject.toml`), so a
plugin package only has to declare its class there to be usable in rule files.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from typing import Any

from actions.base import Action

ENTRY_POINT_GROUP = "stockaj_rules.actions"


class ActionRegistry:
    """Maps an action `type` name to its plugin instance."""

    def __init__(self, action_classes: Iterable[type[Action[Any]]] = ()) -> None:
        self._actions: dict[str, Action[Any]] = {}
        for action_class in action_classes:
            self.register(action_class)

    def register(self, action_class: type[Action[Any]]) -> None:
        name = action_class.type
        if name in self._actions:
            raise ValueError(
                f"action type {name!r} is registered twice "
                f"({type(self._actions[name]).__qualname__} and {action_class.__qualname__}); "
                "rename one of them"
            )
        self._actions[name] = action_class()

    def get(self, name: str) -> Action[Any] | None:
        return self._actions.get(name)

    def names(self) -> list[str]:
        return sorted(self._actions)

    def suggest(self, name: str) -> str | None:
        """The closest known type name, for "did you mean" hints."""
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.6)
        return close[0] if close else None

    def __iter__(self) -> Iterator[Action[Any]]:
        return iter(self._actions[name] for name in self.names())


def load_registry() -> ActionRegistry:
    """Every action type declared by installed packages (ours and plugins)."""
    classes = [entry.load() for entry in entry_points(group=ENTRY_POINT_GROUP)]
    return ActionRegistry(sorted(classes, key=lambda cls: cls.type))
