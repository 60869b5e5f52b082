"""Action params: checked when rules load, rendered and validated per delivery.

At load time every param is checked against the action's params model as far
as it can be before a delivery exists: unknown params (with "did you mean"),
missing required ones, the type of every param written literally, template
syntax, and outgoing URLs whose scheme, host or port could come from payload data
(engine/language/outgoing_urls.py). A templated param is validated after rendering, with the same model.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from actions.base import Action, ActionParams, NotTemplated, OutgoingURL
from actions.registry import ActionRegistry
from engine.language.outgoing_urls import OriginParts, check_url
from engine.language.rules import RuleAction
from engine.language.sources import JsonPath
from engine.language.templates import compile_value, has_template_syntax
from engine.language.validation import FieldProblem, describe, unknown_key_message
from engine.secrets import MASK


class ParamsInvalid(Exception):
    """Rendered params do not fit the action's params model."""


def bind_action(
    spec: dict[str, Any], index: int, registry: ActionRegistry
) -> tuple[RuleAction | None, list[FieldProblem]]:
    """Check one action of a rule: the bound action, or None, and every problem found."""
    loc: JsonPath = ("actions", index)
    name = spec.get("type")
    plugin = registry.get(name) if isinstance(name, str) else None
    if plugin is None:
        suggestion = registry.suggest(name) if isinstance(name, str) else None
        hint = f"did you mean '{suggestion}'?" if suggestion else f"known: {', '.join(registry.names())}"
        return None, [FieldProblem((*loc, "type"), f"unknown action type {name!r} ({hint})")]
    params = {key: value for key, value in spec.items() if key != "type"}
    problems = _check_literal_params(plugin, params, loc)
    templates = {}
    for key, value in params.items():
        escape = plugin.escaped_params.get(key)
        template, template_problems = compile_value(value, (*loc, key), escape)
        templates[key] = template
        problems += [FieldProblem(p.loc, p.message, template_line=p.line) for p in template_problems]
    origins, url_problems = _check_outgoing_urls(plugin.Params, params, loc)
    problems += url_problems
    action = RuleAction(
        index=index,
        type=plugin.type,
        plugin=plugin,
        params=templates,
        escapes=dict(plugin.escaped_params),
        origins=origins,
    )
    return action, problems


def validate_rendered(
    plugin: Action[Any], rendered: dict[str, Any], *, dry_run: bool = False
) -> ActionParams:
    """The action's params model from rendered values; `ParamsInvalid` says what is off.

    In a dry run a URL holding the placeholder of an unset secret (`***`) is let through.
    """
    try:
        params: ActionParams = plugin.Params.model_validate(rendered)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(map(str, p.loc)) or 'params'}: {p.message}" for p in describe(exc, plugin.Params)
        )
        raise ParamsInvalid(f"rendered params are not valid: {details}") from None
    for name, field in type(params).model_fields.items():
        value = getattr(params, name)
        if _needs_http_url(field) and isinstance(value, str) and not (dry_run and MASK in value):
            _require_http_url(value)
    return params


def _check_literal_params(plugin: Action[Any], params: dict[str, Any], loc: JsonPath) -> list[FieldProblem]:
    model = plugin.Params
    fields = rule_params(model)
    problems = [
        FieldProblem((*loc, key), unknown_key_message(key, fields, "param"), at_key=True)
        for key in params
        if key not in fields
    ]
    problems += [
        FieldProblem(loc, f"missing required param '{name}' for action type '{plugin.type}'")
        for name, field in fields.items()
        if field.is_required() and name not in params
    ]
    problems += [
        FieldProblem(
            (*loc, key),
            f"expected '{key}' written out in the rule, found a template; it may not depend on the delivery",
        )
        for key, value in params.items()
        if key in fields and _templated(value) and _has_marker(fields[key], NotTemplated)
    ]
    literal = {k: v for k, v in params.items() if k in fields and not _templated(v)}
    for key, value in literal.items():
        try:
            _adapter(model, key).validate_python(value)
        except ValidationError as exc:
            problems += [FieldProblem((*loc, key, *p.loc), p.message, p.at_key) for p in describe(exc)]
            continue
        if _needs_http_url(fields[key]) and isinstance(value, str):
            try:
                _require_http_url(value)
            except ParamsInvalid as error:
                problems.append(FieldProblem((*loc, key), str(error)))
    if not problems and len(literal) == len(params):
        try:  # whole-model checks (params that exclude each other)
            model.model_validate(params)
        except ValidationError as exc:
            problems += [FieldProblem((*loc, *p.loc), p.message) for p in describe(exc, model)]
    return problems


def _check_outgoing_urls(
    model: type[BaseModel], params: dict[str, Any], loc: JsonPath
) -> tuple[dict[str, OriginParts], list[FieldProblem]]:
    """Where each outgoing URL may go (its configuration-only start), and the URLs refused."""
    allowed: dict[str, OriginParts] = {}
    problems = []
    for name, field in rule_params(model).items():
        value = params.get(name)
        if not (_is_outgoing_url(field) and isinstance(value, str)):
            continue
        http = _needs_http_url(field)
        parts, problem = check_url(value, http=http)
        if problem is not None:
            problems.append(FieldProblem((*loc, name), problem.message, template_line=problem.line))
        elif parts is not None and http:
            allowed[name] = parts
    return allowed, problems


def _require_http_url(value: str) -> None:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        raise ParamsInvalid(f"expected an http(s) URL, found {value[:60]!r}") from None
    if url.scheme not in ("http", "https") or not url.host:
        if not url.scheme:
            found = "no scheme (write https:// in front)"
        elif url.scheme not in ("http", "https"):
            found = f"the scheme {url.scheme}:"
        else:
            found = "no host"
        raise ParamsInvalid(f"expected an http:// or https:// URL with a host, found {found}")


def _templated(value: Any) -> bool:
    if isinstance(value, str):
        return has_template_syntax(value)
    if isinstance(value, dict):
        return any(_templated(item) for item in value.values())
    if isinstance(value, list):
        return any(_templated(item) for item in value)
    return False


def rule_params(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """The params model's fields by the name rule files use (the alias, when a field has one)."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _is_outgoing_url(field: FieldInfo) -> bool:
    return _has_marker(field, OutgoingURL)


def _needs_http_url(field: FieldInfo) -> bool:
    return any(isinstance(item, OutgoingURL) and item.http for item in field.metadata)


def _has_marker(field: FieldInfo, marker: type) -> bool:
    return any(isinstance(item, marker) for item in field.metadata)


_adapters: dict[tuple[type[BaseModel], str], TypeAdapter[Any]] = {}


def _adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    """Validates one field on its own, with the field's constraints (cached)."""
    adapter = _adapters.get((model, name))
    if adapter is None:
        field = rule_params(model)[name]
        # The field's constraints and validators live in its metadata; the alias stays out.
        annotated: Any = (
            Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        )
        adapter = _adapters[(model, name)] = TypeAdapter(annotated)
    return adapter
