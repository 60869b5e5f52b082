"""The committed JSON Schema is the one generated from the loader's models."""

from __future__ import annotations

import json
from pathlib import Path

from actions.registry import load_registry
from engine.language.expressions import CompiledExpression, compile_expression
from engine.language.schema import rule_schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema" / "rule.schema.json"


def test_committed_schema_is_not_stale() -> None:
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == rule_schema(load_registry()), (
        "schema/rule.schema.json is stale: run `stockaj-rules schema > schema/rule.schema.json`"
    )


def test_schema_offers_every_action_type_and_allows_templates_in_typed_params() -> None:
    schema = rule_schema(load_registry())
    variants = schema["$defs"]["Rule"]["properties"]["actions"]["items"]["oneOf"]
    types = {schema["$defs"][v["$ref"].split("/")[-1]]["properties"]["type"]["const"] for v in variants}
    assert types == {"slack", "http", "purchase_order", "sql_upsert", "log"}
    quantity = schema["$defs"]["PurchaseOrderAction"]["properties"]["quantity"]
    assert {"type": "integer"}.items() <= quantity["anyOf"][0].items()
    assert quantity["anyOf"][1]["type"] == "string"
    assert schema["$defs"]["Rule"]["additionalProperties"] is False


def test_schema_leads_with_expressions_for_when_and_its_examples_compile() -> None:
    when = rule_schema(load_registry())["$defs"]["Rule"]["properties"]["when"]
    expression, logic, _ = when["anyOf"]
    assert expression["type"] == "string"
    assert expression["title"] == "Expression"
    assert "data.quantity <= data.minimum_quantity" in when["description"]
    for example in expression["examples"]:
        assert isinstance(compile_expression(example), CompiledExpression), example
    assert logic["type"] == "object"
    assert logic["maxProperties"] == 1


def test_schema_says_enabled_is_only_true_or_false() -> None:
    enabled = rule_schema(load_registry())["$defs"]["Rule"]["properties"]["enabled"]
    assert enabled["type"] == "boolean"
