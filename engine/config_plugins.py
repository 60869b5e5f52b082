"""The settings installed plugins declare (engine/plugins.py), checked and masked by their kinds.

engine/config.py reads the environment and hands it here with the plugins it found;
nothing here reads the environment itself. A value is checked by its declared kind (an
http(s) URL, a database URL, a whole number) and, when wrong, is one line naming the
variable, shown only as its kind allows: never a secret, a URL without its password.
What is sensitive follows the kinds too: secrets as a whole, the token path of a secret
URL, the password of any URL.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from engine.config_errors import (
    Display,
    SettingProblem,
    is_secret_name,
    setting_problem_line,
    url_passwords,
)
from engine.config_values import database_url, http_url
from engine.errors import ConfigurationError, PluginError
from engine.plugins import INT, InstalledPlugin, Setting

PluginValue = str | int
# A secret URL's path is its token and may be shown without the host; a shorter path is no token
# (`/hooks` on a test server), and masking it would blot out ordinary words.
_MIN_TOKEN_PATH = 16


@dataclass(frozen=True)
class PluginSettings:
    """The settings the installed plugins declare, and the checked values of those that are set."""

    plugins: tuple[InstalledPlugin, ...] = ()
    values: Mapping[str, PluginValue] = field(default_factory=dict)
    _scoped: dict[type[Any], Mapping[str, PluginValue | None]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def declared(self) -> Iterator[tuple[Setting[Any], InstalledPlugin]]:
        """Each declared setting once, with the first plugin declaring it (plugins declare one alike)."""
        seen: set[str] = set()
        for plugin in self.plugins:
            for setting in plugin.settings:
                if setting.variable not in seen:
                    seen.add(setting.variable)
                    yield setting, plugin

    def for_action(self, action_class: type[Any]) -> Mapping[str, PluginValue | None]:
        """What one action may read: each setting its class declares (None when unset), no other."""
        scoped = self._scoped.get(action_class)
        if scoped is None:
            declared = getattr(action_class, "settings", ())
            scoped = MappingProxyType({s.variable: self.values.get(s.variable) for s in declared})
            self._scoped[action_class] = scoped
        return scoped

    def secret_variables(self) -> list[str]:
        """The variables declared as secrets, whatever their names say."""
        return [setting.variable for setting, _ in self.declared() if setting.kind.secret]

    def sensitive_values(self) -> list[str]:
        """What must never be shown: secrets, the token paths of secret URLs, URL passwords."""
        found: list[str] = []
        for setting, _ in self.declared():
            value = self.values.get(setting.variable)
            if not isinstance(value, str):
                continue
            if setting.kind.secret:
                found.append(value)
                if setting.kind.url == "http":
                    path = urlsplit(value).path.strip("/")
                    found.append(path if len(path) >= _MIN_TOKEN_PATH else "")
            if setting.kind.url:
                found += url_passwords(value)
        return [value for value in found if value]


def refuse_taken(declared: PluginSettings, taken: Collection[str], prefix: str) -> None:
    """A plugin may not declare a variable the engine reads itself (`taken`, or `prefix*`)."""
    for setting, plugin in declared.declared():
        if setting.variable in taken or setting.variable.startswith(prefix):
            raise PluginError(
                f"the action plugin {plugin.type_name!r} declares the setting {setting.variable}, which the "
                f"engine reads itself ({plugin.origin}); rename the plugin's setting"
            )


def read_plugin_settings(
    env: Mapping[str, str], plugins: tuple[InstalledPlugin, ...], secrets: list[str]
) -> PluginSettings:
    """The declared settings' values from `env`, each checked by its kind.

    Raises ConfigurationError for a value that is wrong or a required setting that is unset.
    """
    settings = PluginSettings(plugins)
    values: dict[str, PluginValue] = {}
    for setting, plugin in settings.declared():
        raw = env.get(setting.variable)
        if raw:
            values[setting.variable] = _checked(setting, raw, secrets)
        elif setting.required:
            package = plugin.distribution.partition(" ")[0]
            uninstall = f", or uninstall {package}" if plugin.entry_point else ""
            raise ConfigurationError(
                f"{setting.variable} is not set: the {plugin.type_name} action needs it "
                f"({setting.description.rstrip('.')}); set it in the environment{uninstall}"
            )
    return PluginSettings(plugins, values)


def display(setting: Setting[Any]) -> Display:
    """How an error may show the setting's value: by its kind, or hidden when named like a secret."""
    if setting.kind.secret or is_secret_name(setting.variable):
        return "hidden"
    if setting.kind.url == "database":
        return "redacted URL"
    # Any other URL may hold a token in its path.
    return "hidden" if setting.kind.url else "value"


def _checked(setting: Setting[Any], raw: str, secrets: list[str]) -> PluginValue:
    try:
        if setting.kind.url == "http":
            return http_url(raw)
        if setting.kind.url == "database":
            return database_url(raw)
        if setting.kind == INT:
            return _whole_number(raw)
    except SettingProblem as problem:
        raise ConfigurationError(
            setting_problem_line(setting.variable, problem, raw, secrets, display(setting))
        ) from None
    return raw


def _whole_number(raw: str) -> int:
    text = raw.strip()
    digits = text.removeprefix("-").removeprefix("+")
    # Longer than 18 digits is no count or duration, and int() of a huge text is slow.
    if not digits.isascii() or not digits.isdecimal() or len(digits) > 18:
        raise SettingProblem("not a whole number; write e.g. 10")
    return int(text)
