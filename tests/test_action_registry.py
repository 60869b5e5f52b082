"""The action registry: built-ins found through entry points, like any plugin."""

from __future__ import annotations

from typing import Any

import pytest

from actions.base import Action, ActionContext, ActionParams, ActionResult
from actions.http import HttpAction
from actions.log import LogAction
from actions.purchase_order import PurchaseOrderAction
from actions.registry import ActionRegistry, load_registry
from actions.slack import SlackAction
from actions.sql_upsert import SqlUpsertAction
from engine.errors import PluginError
from engine.plugins import plugin_of

BUILT_INS: dict[str, type[Action[Any]]] = {
    "http": HttpAction,
    "log": LogAction,
    "purchase_order": PurchaseOrderAction,
    "slack": SlackAction,
    "sql_upsert": SqlUpsertAction,
}


def test_load_registry_finds_exactly_the_five_built_ins_through_entry_points() -> None:
    registry = load_registry()

    assert registry.names() == sorted(BUILT_INS)
    for name, action_class in BUILT_INS.items():
        assert type(registry.get(name)) is action_class


@pytest.mark.parametrize("action_class", BUILT_INS.values(), ids=BUILT_INS.keys())
def test_every_built_in_has_a_one_line_description_and_a_strict_params_model(
    action_class: type[Action[Any]],
) -> None:
    assert action_class.description.strip()
    assert "\n" not in action_class.description
    assert issubclass(action_class.Params, ActionParams)
    assert action_class.Params.model_config.get("extra") == "forbid"
    # The rule-file JSON Schema is generated from these models.
    assert action_class.Params.model_json_schema()["additionalProperties"] is False


def test_http_params_schema_names_the_json_param_as_rule_files_write_it() -> None:
    assert "json" in HttpAction.Params.model_json_schema()["properties"]


def test_registering_a_type_name_twice_is_refused() -> None:
    class OtherSlack(Action[ActionParams]):
        type = "slack"
        description = "A second plugin claiming the slack name."
        Params = ActionParams

        async def run(self, params: ActionParams, ctx: ActionContext) -> ActionResult:
            return ActionResult()

    registry = ActionRegistry([SlackAction])

    with pytest.raises(ValueError, match="'slack' is registered twice"):
        registry.register(OtherSlack)
    assert type(registry.get("slack")) is SlackAction


def test_suggest_offers_the_closest_type_name_or_none() -> None:
    registry = load_registry()

    assert registry.suggest("slak") == "slack"
    assert registry.suggest("purchase-order") == "purchase_order"
    assert registry.suggest("teleport") is None


class NotAnAction:
    """Has what the engine reads of an action, but is not one."""

    type = "impostor"
    Params = ActionParams

    async def run(self, params: ActionParams, ctx: ActionContext) -> ActionResult:
        return ActionResult()


def test_a_plugin_that_is_not_an_action_subclass_is_refused_naming_where_it_came_from() -> None:
    found = plugin_of(NotAnAction, distribution="acme-actions 1.0", entry_point="impostor = acme:NotAnAction")

    with pytest.raises(PluginError) as raised:
        ActionRegistry.of([found])

    assert str(raised.value) == (
        "the action plugin 'impostor' is not an action class (acme-actions 1.0 (entry point "
        "impostor = acme:NotAnAction)); point the entry point at a subclass of actions.base.Action"
    )


@pytest.mark.parametrize(
    ("loaded", "problem"),
    [
        (print, "is not an action class (got a builtin_function_or_method)"),
        (ActionParams, "is not an action class (got the class ActionParams, without Params and run)"),
        (type("Nameless", (LogAction,), {"type": ""}), "has no type name"),
        (type("Unsettled", (LogAction,), {"settings": ("LOG_LEVEL",)}), "declares its settings wrongly"),
    ],
    ids=["function", "other class", "no type", "settings"],
)
def test_what_an_entry_point_names_is_checked_before_it_is_used(loaded: object, problem: str) -> None:
    with pytest.raises(PluginError) as raised:
        plugin_of(loaded, distribution="acme-actions 1.0", entry_point="acme = acme:Thing")

    assert problem in str(raised.value)
    assert "(distribution acme-actions 1.0, entry point acme = acme:Thing); " in str(raised.value)
