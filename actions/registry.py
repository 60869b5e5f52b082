"""The registry of action types: built-in and third-party plugins, found the same way.

Every action type, ours included, is declared under the `stockaj_rules.actions`
entry-point group in its package's metadata (see our `pyproject.toml`), so a
plugin package only has to declare its class there to be usable in rule files
(docs/plugins.md). engine/plugins.py finds and checks them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from typing import Any

from actions.base import Action
from engine.errors import PluginError
from engine.plugins import ENTRY_POINT_GROUP, InstalledPlugin, installed_plugins

__all__ = ["ENTRY_POINT_GROUP", "ActionRegistry", "load_registry"]


class ActionRegistry:
    """Maps an action `type` name to its plugin instance."""

    def __init__(self, action_classes: Iterable[type[Action[Any]]] = ()) -> None:
        self._actions: dict[str, Action[Any]] = {}
        for action_class in action_classes:
            self.register(action_class)

    @classmethod
    def of(cls, plugins: Iterable[InstalledPlugin]) -> ActionRegistry:
        """The registry of plugins found installed; each must be an `Action` subclass."""
        classes = []
        for plugin in plugins:
            if not issubclass(plugin.action_class, Action):
                raise PluginError(
                    f"the action plugin {plugin.type_name!r} is not an action class ({plugin.origin}); "
                    "point the entry point at a subclass of actions.base.Action"
                )
            classes.append(plugin.action_class)
        return cls(classes)

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
    """Every action type declared by installed packages (ours and plugins).

    Raises PluginError (one line naming the distribution and entry point) for a plugin
    that cannot be loaded or clashes with another.
    """
    return ActionRegistry.of(installed_plugins())
