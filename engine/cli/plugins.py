"""`stockaj-rules plugins`: the action types installed, where each comes from, the settings it reads.

For an operator who installed a plugin and wants to know what to set: each setting
with its kind and whether it is set (never its value). Loading the settings checks
them, so a bad value, or a required setting unset, ends this command as any other.
"""

from __future__ import annotations

import click

from engine.config import load_settings
from engine.config_plugins import PluginSettings
from engine.plugins import InstalledPlugin


@click.command()
def plugins() -> None:
    """List the installed action types and their settings.

    Whether each setting is set, never its value.
    """
    settings = load_settings().plugins
    for plugin in settings.plugins:
        for line in plugin_lines(plugin, settings):
            click.echo(line)


def plugin_lines(plugin: InstalledPlugin, settings: PluginSettings) -> list[str]:
    description = getattr(plugin.action_class, "description", "")
    lines = [f"{plugin.type_name}: {description}", f"  from {plugin.origin}"]
    width = max((len(setting.variable) for setting in plugin.settings), default=0)
    for setting in plugin.settings:
        kind = f"{setting.kind.name}, required" if setting.required else setting.kind.name
        state = "set" if setting.variable in settings.values else "unset"
        lines.append(f"  {setting.variable:<{width}}  {kind}, {state}: {setting.description}")
    return lines
