"""Action plugins as installed: found through their entry points, with the settings they declare.

Every action type, the built-in ones too, is a class named by an entry point of the
`stockaj_rules.actions` group in its distribution's metadata. `installed_plugins()`
loads them once per process. A plugin that cannot be imported, is not an action class,
declares its settings wrongly, or takes a type name another plugin has, is a
`PluginError`: one line naming the distribution and the entry point and what to do,
which stops every command (engine/config.py loads the plugins with the settings).

A plugin declares each environment variable it reads as a `Setting`: the variable, its
kind (`TEXT`, `INT`, `URL`, `SECRET`, `SECRET_URL`, `DATABASE_URL`: what it holds, which
decides how it is checked and masked) and whether it is required. engine/config.py
reads and checks them with its own settings; an action gets its values in its context.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, Literal, TypeVar

from engine.errors import PluginError

ENTRY_POINT_GROUP = "stockaj_rules.actions"
_VARIABLE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_REASON_CHARS = 200

V = TypeVar("V", str, int)


@dataclass(frozen=True, slots=True)
class SettingKind(Generic[V]):
    """What a setting holds: its Python type, whether it is a secret, and which URL it is."""

    name: str
    value_type: type[V]
    # The whole value is a credential: masked wherever it appears, never quoted in an error.
    secret: bool = False
    # "http": an http(s) URL; "database": a SQLAlchemy URL given its async driver.
    url: Literal["http", "database"] | None = None


TEXT = SettingKind("text", str)
INT = SettingKind("int", int)
# An http(s) URL; its password, if it has one, is masked.
URL = SettingKind("URL", str, url="http")
SECRET = SettingKind("secret", str, secret=True)
# An http(s) URL that is a credential as a whole: a webhook URL whose path is its token.
SECRET_URL = SettingKind("secret URL", str, secret=True, url="http")
# A database URL (postgresql:// and sqlite:// get their async driver); its password is masked.
DATABASE_URL = SettingKind("database URL", str, url="database")
KINDS = (TEXT, INT, URL, SECRET, SECRET_URL, DATABASE_URL)


@dataclass(frozen=True, slots=True)
class Setting(Generic[V]):
    """One environment variable an action reads: `ctx.setting(THIS)` is its value, or None."""

    variable: str
    kind: SettingKind[V]
    description: str
    required: bool = False

    def __post_init__(self) -> None:
        if not _VARIABLE.fullmatch(self.variable):
            raise ValueError(
                f"setting {self.variable!r} is not an environment variable name; "
                "write it in capitals, digits and _, like ACME_API_TOKEN"
            )
        if self.kind not in KINDS:
            raise ValueError(
                f"setting {self.variable}: unknown kind {self.kind!r}; use one of actions.base's "
                "TEXT, INT, URL, SECRET, SECRET_URL, DATABASE_URL"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class InstalledPlugin:
    """An action class as found: its type name, its settings, and where it came from."""

    type_name: str
    action_class: type[Any]
    settings: tuple[Setting[Any], ...]
    distribution: str  # name and version: "acme-actions 1.0"
    entry_point: str  # as written in the metadata: "acme = acme_actions:AcmeAction"

    @property
    def origin(self) -> str:
        """`acme-actions 1.0 (entry point acme = acme_actions:AcmeAction)`, for messages."""
        return (
            f"{self.distribution} (entry point {self.entry_point})" if self.entry_point else self.distribution
        )


@functools.cache
def installed_plugins() -> tuple[InstalledPlugin, ...]:
    """Every action plugin installed, in type-name order; raises PluginError for the first bad one."""
    found = [_load(entry) for entry in entry_points(group=ENTRY_POINT_GROUP)]
    return checked(found)


def checked(plugins: Iterable[InstalledPlugin]) -> tuple[InstalledPlugin, ...]:
    """`plugins` in type-name order, once no two share a type name or declare one variable differently."""
    by_type: dict[str, list[InstalledPlugin]] = {}
    for plugin in plugins:
        by_type.setdefault(plugin.type_name, []).append(plugin)
    for name, same in sorted(by_type.items()):
        if len(same) > 1:
            first, second = sorted(same, key=lambda p: (p.distribution, p.entry_point))[:2]
            raise PluginError(
                f"action type {name!r} is declared twice: by {first.origin} and by {second.origin}; "
                "uninstall one of them, or rename the type of one"
            )
    ordered = tuple(same[0] for _, same in sorted(by_type.items()))
    _check_shared_variables(ordered)
    return ordered


def plugin_of(action_class: object, *, distribution: str = "", entry_point: str = "") -> InstalledPlugin:
    """What an action class declares, checked; raises PluginError naming where it came from.

    `distribution` and `entry_point` say where an installed plugin came from; a class
    registered directly (in a test) is named by its module and name instead.
    """
    qualname = f"{getattr(action_class, '__module__', '?')}.{getattr(action_class, '__qualname__', '?')}"
    where = f"distribution {distribution}, entry point {entry_point}" if distribution else f"class {qualname}"
    label = entry_point.partition("=")[0].strip() or getattr(action_class, "__qualname__", "?")
    if not isinstance(action_class, type):
        raise PluginError(
            f"the action plugin {label!r} is not an action class (got {_kind_of(action_class)}) ({where}); "
            "point the entry point at a subclass of actions.base.Action"
        )
    if not callable(getattr(action_class, "run", None)) or not isinstance(
        getattr(action_class, "Params", None), type
    ):
        raise PluginError(
            f"the action plugin {label!r} is not an action class (got the class {action_class.__qualname__}, "
            f"without Params and run) ({where}); point the entry point at a subclass of actions.base.Action"
        )
    type_name = getattr(action_class, "type", None)
    if not isinstance(type_name, str) or not type_name:
        raise PluginError(
            f"the action plugin {label!r} has no type name ({where}); "
            'give its class a type, e.g. type = "acme_order"'
        )
    settings = getattr(action_class, "settings", ())
    if not isinstance(settings, tuple | list) or not all(isinstance(s, Setting) for s in settings):
        raise PluginError(
            f"the action plugin {label!r} declares its settings wrongly ({where}); "
            "write settings = (Setting(...), ...) with actions.base.Setting"
        )
    return InstalledPlugin(
        type_name=type_name,
        action_class=action_class,
        settings=tuple(settings),
        distribution=distribution or qualname,
        entry_point=entry_point,
    )


def _load(entry: EntryPoint) -> InstalledPlugin:
    distribution = f"{entry.dist.name} {entry.dist.version}" if entry.dist else "an unknown distribution"
    written = f"{entry.name} = {entry.value}"
    try:
        loaded = entry.load()
    except (Exception, SystemExit) as exc:  # whatever its import raises, it is this plugin's
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:_REASON_CHARS]
        package = entry.dist.name if entry.dist else "it"
        todo = "install what it needs" if isinstance(exc, ImportError) else "fix or update it"
        raise PluginError(
            f"the action plugin {entry.name!r} cannot be loaded: {reason} (distribution {distribution}, "
            f"entry point {written}); {todo}, or uninstall it: pip uninstall {package}"
        ) from None
    return plugin_of(loaded, distribution=distribution, entry_point=written)


def _check_shared_variables(plugins: Iterable[InstalledPlugin]) -> None:
    """Two plugins may read one variable (one token for two actions), but as the same kind."""
    seen: dict[str, tuple[Setting[Any], InstalledPlugin]] = {}
    for plugin in plugins:
        for setting in plugin.settings:
            if setting.variable not in seen:
                seen[setting.variable] = (setting, plugin)
                continue
            other, owner = seen[setting.variable]
            if (other.kind, other.required) != (setting.kind, setting.required):
                raise PluginError(
                    f"setting {setting.variable} is declared as {_declared(other)} by {owner.origin} "
                    f"and as {_declared(setting)} by {plugin.origin}; declare it alike, or rename one"
                )


def _declared(setting: Setting[Any]) -> str:
    return f"a{' required' if setting.required else 'n optional'} {setting.kind.name}"


def _kind_of(value: object) -> str:
    name = type(value).__name__
    return f"a{'n' if name[:1] in 'aeiou' else ''} {name}"
