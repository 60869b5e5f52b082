"""The JSON Schema of rule files, generated from the models the loader validates with.

`RuleSpec` gives the rule's keys; each registered action's params model gives
one variant of an action, keyed by its `type`. A param that is not text may
also be written as a template (rendered per delivery), so the schema allows a
template string there too. `schema/rule.schema.json` is this output, committed;
a test fails when it is stale (`stockaj-rules schema > schema/rule.schema.json`).
"""

from __future__ import annotations

from typing import Any

from actions.base import Action
from actions.registry import ActionRegistry
from engine.language.rules import RuleSpec

SCHEMA_ID = "https://stockaj-rules.dev/schema/rule.schema.json"
TEMPLATE_STRING = {
    "type": "string",
    "pattern": "\\{[{%#]",
    "description": "A Jinja2 template, rendered for each delivery.",
}


def rule_schema(registry: ActionRegistry) -> dict[str, Any]:
    definitions: dict[str, Any] = {}
    rule = RuleSpec.model_json_schema(ref_template="#/$defs/{model}")
    definitions.update(rule.pop("$defs", {}))
    definitions.pop("ActionSpec", None)
    variants = []
    for plugin in registry:
        name = type(plugin).__name__
        definitions[name] = _action_schema(plugin, definitions)
        variants.append({"$ref": f"#/$defs/{name}"})
    rule["properties"]["actions"]["items"] = {"oneOf": variants}
    definitions["Rule"] = rule
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Stockaj rule file",
        "description": "One rule, or a list of rules.",
        "oneOf": [
            {"$ref": "#/$defs/Rule"},
            {"type": "array", "items": {"$ref": "#/$defs/Rule"}},
        ],
        "$defs": dict(sorted(definitions.items())),
    }


def _action_schema(plugin: Action[Any], definitions: dict[str, Any]) -> dict[str, Any]:
    params = plugin.Params.model_json_schema(ref_template="#/$defs/{model}")
    definitions.update(params.pop("$defs", {}))
    properties = {
        "type": {"const": plugin.type, "description": plugin.description},
        **{key: _templatable(value) for key, value in params.get("properties", {}).items()},
    }
    return {
        "type": "object",
        "title": f"{plugin.type} action",
        "description": plugin.description,
        "properties": properties,
        "required": ["type", *params.get("required", [])],
        "additionalProperties": False,
    }


def _templatable(schema: dict[str, Any]) -> dict[str, Any]:
    if schema.get("type") == "string" and "pattern" not in schema:
        return schema
    meta: dict[str, Any] = {key: schema[key] for key in ("title", "description", "default") if key in schema}
    rest = {key: value for key, value in schema.items() if key not in meta}
    return {**meta, "anyOf": [rest, TEMPLATE_STRING]}
