"""Jinja2 templates in action params: parsed when rules load, rendered per delivery.

Every string param is a template, rendered in a sandbox with strict undefined
(engine.language.templates.sandbox):

- a param that is exactly one `{{ expression }}` keeps the expression's native
  type (`"{{ data.minimum_quantity * 2 - data.quantity }}"` renders the number 7);
- any other string renders to a string; payload values are only ever data;
- `data.items` always means the payload's field, even where a dict method has
  that name;
- a missing field is an error naming the field and what the object holds;
- a secret may only be used as it is (engine.language.templates.secret_use), so masking finds it;
- runaway templates fail fast, while they run: each render has its own budget of
  size, steps, call depth and time (engine.language.templates.budget).

`render` turns every failure of a render, whatever its kind, into a
`TemplateRenderError` with a readable message.
"""

from __future__ import annotations

import difflib
import functools
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError

from engine.errors import TemplateRenderError
from engine.excerpt import cut
from engine.language.sources import JsonPath
from engine.language.templates import budget as template_budget
from engine.language.templates.budget import (
    MAX_EXPONENT,
    MAX_ITEMS,
    MAX_RANGE_ITEMS,
    MAX_TEXT_CHARS,
    Budget,
    Deadline,
    OutOfTime,
    check_value,
)
from engine.language.templates.sandbox import (
    TEMPLATE_GLOBALS,
    Escape,
    FieldEnvironment,
    MissingField,
    environment,
)
from engine.language.templates.secret_use import SecretMisuse, secret_misuses
from engine.secrets import Secrets

__all__ = [
    "MAX_EXPONENT",
    "MAX_ITEMS",
    "MAX_RANGE_ITEMS",
    "MAX_TEXT_CHARS",
    "Escape",
    "ParamTemplate",
    "TemplateProblem",
    "compile_value",
    "environment",
    "has_template_syntax",
    "render",
    "with_globals",
]


def has_template_syntax(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """A template that does not parse, at `loc` inside the params; `line` is the template's own."""

    loc: JsonPath
    message: str
    line: int = 1


class ParamTemplate:
    """A param value whose strings are templates, ready to render against a context."""

    __slots__ = ("_render",)

    def __init__(self, render: Callable[[dict[str, Any]], Any]) -> None:
        self._render = render

    def render(self, context: dict[str, Any]) -> Any:
        return self._render(context)


def compile_value(
    value: Any, loc: JsonPath = (), escape: Escape | None = None
) -> tuple[ParamTemplate, list[TemplateProblem]]:
    """Compile every string inside `value`; problems are collected, not raised."""
    problems: list[TemplateProblem] = []
    template = _compile(value, loc, escape, problems)
    return template, problems


def _compile(
    value: Any, loc: JsonPath, escape: Escape | None, problems: list[TemplateProblem]
) -> ParamTemplate:
    if isinstance(value, dict):
        items = {key: _compile(item, (*loc, key), escape, problems) for key, item in value.items()}
        return ParamTemplate(lambda ctx: {key: t.render(ctx) for key, t in items.items()})
    if isinstance(value, list):
        elements = [_compile(item, (*loc, i), escape, problems) for i, item in enumerate(value)]
        return ParamTemplate(lambda ctx: [t.render(ctx) for t in elements])
    if not (isinstance(value, str) and has_template_syntax(value)):
        return ParamTemplate(lambda ctx: value)
    try:
        template, native, misuses = _compiled(environment(escape), value, escape is None)
    except jinja2.TemplateSyntaxError as exc:
        problems.append(TemplateProblem(loc, f"template syntax error: {exc.message}", exc.lineno))
        return ParamTemplate(lambda ctx: value)
    problems += [TemplateProblem(loc, misuse.message, misuse.line) for misuse in misuses]
    if native:
        return ParamTemplate(lambda ctx: _native(_evaluate(template, ctx)))
    return ParamTemplate(lambda ctx: _checked_text(_render_text(template, ctx)))


@functools.lru_cache(maxsize=4096)
def _compiled(
    env: FieldEnvironment, source: str, native: bool
) -> tuple[jinja2.Template, bool, tuple[SecretMisuse, ...]]:
    """The template of `source`, parsed once; True when it is one expression keeping its type;
    and how it misuses `secrets`, if it does (engine.language.templates.secret_use).

    Cached: rules generated from a list (one per item or site) share their templates,
    and a compiled template is only ever read.
    """
    parsed = env.parse(source)
    misuses = tuple(secret_misuses(parsed))
    expression = _single_expression(parsed) if native else None
    if expression is not None:
        # `{% set result = <expression> %}`, built from the parsed tree: the value keeps its type.
        assign = nodes.Template([nodes.Assign(nodes.Name("result", "store"), expression)])
        return _acyclic(env.from_string(assign)), True, misuses
    return _acyclic(env.from_string(parsed)), False, misuses


def _acyclic(template: jinja2.Template) -> jinja2.Template:
    """`template` without the references from its code's namespace back to it.

    Jinja keeps `__jinja_template__` there only to rewrite tracebacks in
    `Template.render` (not used here), and `root` only to build the template
    (done). Without those cycles, a rule set replaced by a reload is freed by
    reference counting: a running server needs no full garbage collection,
    which holds every thread, after each reload.
    """
    namespace = template.root_render_func.__globals__
    namespace.pop("__jinja_template__", None)
    namespace.pop("root", None)
    return template


def _render_text(template: jinja2.Template, context: dict[str, Any]) -> str:
    # A shared context reads `context` as it is instead of copying it with the globals
    # for every render (half the cost); `render()` puts the globals into `context`.
    return "".join(template.root_render_func(template.new_context(context, shared=True)))


def _single_expression(parsed: nodes.Template) -> nodes.Expr | None:
    """The expression when the template is exactly one `{{ ... }}` and nothing else, else None."""
    body = parsed.body
    if len(body) != 1 or not isinstance(body[0], nodes.Output) or len(body[0].nodes) != 1:
        return None
    expression = body[0].nodes[0]
    return None if isinstance(expression, nodes.TemplateData) else expression


def _evaluate(template: jinja2.Template, context: dict[str, Any]) -> Any:
    """Run a `{% set result = ... %}` template on a shared context and return `result`."""
    jinja_context = template.new_context(context, shared=True)
    for _ in template.root_render_func(jinja_context):
        pass
    result = jinja_context.vars["result"]
    if not isinstance(result, jinja2.Undefined):
        check_value(result, "the value")
    return result


def _native(value: Any) -> Any:
    """Make an expression's value JSON-shaped (dates as ISO text); undefined fails here."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, str):
        return _checked_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping) and not isinstance(value, Secrets):
        return {str(key): _native(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_native(item) for item in value]
    raise TemplateRenderError(
        f"the expression gave a {type(value).__name__}, which is not a JSON value; "
        "give a text, number, true/false, list or object"
    )


def _checked_text(text: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise TemplateRenderError(
            f"the rendered text is {len(text):,} characters, over the {MAX_TEXT_CHARS:,} limit"
        )
    return text


def with_globals(context: dict[str, Any]) -> dict[str, Any]:
    """`context` plus the functions templates may call; build it once per delivery."""
    return {**TEMPLATE_GLOBALS, **context}


def render(template: ParamTemplate, context: dict[str, Any]) -> Any:
    """Render with a fresh budget and deadline; every failure becomes a `TemplateRenderError`."""
    budget = Budget()
    token = template_budget.start(budget)
    if "range" not in context:
        context = with_globals(context)
    deadline = Deadline(budget.deadline)
    try:
        try:
            deadline.arm()
            return template.render(context)
        finally:
            deadline.watch.leaving = True  # a plain store first: see Deadline
            deadline.disarm()
    except MissingField as exc:
        raise TemplateRenderError(cut(_describe_missing(exc, context), 1_000)) from None
    except TemplateRenderError:
        raise
    except SecurityError as exc:
        raise TemplateRenderError(cut(f"template stopped: {exc}", 1_000)) from None
    except OutOfTime:
        deadline.disarm()
        raise TemplateRenderError(f"template stopped: {template_budget.out_of_time_message()}") from None
    except RecursionError:
        raise TemplateRenderError(
            "template stopped: it nests too deeply (a macro or loop that calls itself?)"
        ) from None
    except MemoryError:
        raise TemplateRenderError("template stopped: it ran out of memory; make it build less") from None
    except Exception as exc:  # whatever a template does wrong is this template's error, never the engine's
        raise TemplateRenderError(cut(f"template failed: {type(exc).__name__}: {exc}", 1_000)) from None
    finally:
        template_budget.finish(token)


def _describe_missing(exc: MissingField, context: dict[str, Any]) -> str:
    if isinstance(exc.owner, Secrets):
        return f"secrets.{exc.name} is not set; set the environment variable SECRET_{exc.name}"
    if exc.owner is jinja2.utils.missing:
        known = sorted(name for name in context if name not in TEMPLATE_GLOBALS)
        hint = _did_you_mean(exc.name, known)
        return f"{exc.name} is not defined{hint}; templates see: {', '.join(known)}"
    owner_path = _path_of(exc.owner, context) if isinstance(exc.owner, dict | list) else None
    if owner_path is None:
        return f"{exc.name} is not a field of a {type(exc.owner).__name__} value"
    path = f"{owner_path}.{exc.name}"
    if isinstance(exc.owner, Mapping):
        keys = sorted(str(key) for key in list(exc.owner)[:10_000])
        hint = _did_you_mean(exc.name, keys, prefix=f"{owner_path}.")
        shown = ", ".join(key if len(key) <= 40 else f"{key[:40]}…" for key in keys[:20])
        holds = f" ({owner_path} has: {shown})" if keys else f" ({owner_path} is empty)"
        return f"{path} is not in the delivery{hint}{holds}"
    return f"{path} is not in the delivery ({owner_path} is a {type(exc.owner).__name__})"


def _did_you_mean(name: str, candidates: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _path_of(target: Any, context: dict[str, Any]) -> str | None:
    """Where `target` sits inside the context, by identity (only used on errors)."""
    queue = deque((value, key) for key, value in context.items())  # shallowest path wins
    while queue:
        value, path = queue.popleft()
        if value is target:
            return path
        if isinstance(value, dict):
            queue.extend((item, f"{path}.{key}") for key, item in value.items())
        elif isinstance(value, list):
            queue.extend((item, f"{path}[{index}]") for index, item in enumerate(value))
    return None
