"""Jinja2 templates in action params: parsed when rules load, rendered per delivery.

Every string param is a template, rendered in a sandbox with strict undefined:

- a param that is exactly one `{{ expression }}` keeps the expression's native
  type (`"{{ data.minimum_quantity * 2 - data.quantity }}"` renders the number 7);
- any other string renders to a string; payload values are only ever data;
- `data.items` always means the payload's field, even where a dict method has
  that name;
- a missing field is an error naming the field and what the object holds;
- runaway templates (`range(10**9)`, huge repetition, padding) fail fast.
"""

from __future__ import annotations

import contextvars
import difflib
import functools
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, NoReturn

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import TemplateRenderError
from engine.secrets import Secrets
from engine.sources import JsonPath

MAX_RANGE_ITEMS = 10_000  # across all `range()` calls of one render
MAX_TEXT_CHARS = 1_000_000
MAX_EXPONENT = 256
_PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs", "format", "format_map"})
_range_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("range_budget")

Escape = Callable[[str], str]


class MissingField(jinja2.UndefinedError):
    """A template read a name or field that is not there."""

    def __init__(self, owner: Any, name: str) -> None:
        super().__init__(name)
        self.owner = owner
        self.name = name


class _StrictField(jinja2.StrictUndefined):
    """Strict undefined that remembers which object lacked which field."""

    __slots__ = ()

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> NoReturn:
        if self._undefined_hint:  # the sandbox refused an unsafe attribute
            raise SecurityError(self._undefined_hint)
        raise MissingField(self._undefined_obj, str(self._undefined_name))

    __str__ = __iter__ = __len__ = __bool__ = __eq__ = __ne__ = __hash__ = _fail_with_undefined_error


def _budgeted_range(*args: int) -> range:
    values = range(*args)
    budget = _range_budget.get(None)
    if budget is not None:
        budget[0] -= len(values)
        if budget[0] < 0:
            raise SecurityError(
                f"range() asked for more than {MAX_RANGE_ITEMS:,} items in one template; "
                "loop over the payload's own lists instead"
            )
    elif len(values) > MAX_RANGE_ITEMS:
        raise SecurityError(f"range() of {len(values):,} items is over the {MAX_RANGE_ITEMS:,} limit")
    return values


_WIDTH_IN_FORMAT = re.compile(r"%[-+ #0]*(\d+)")


def _check_widths(*values: Any) -> None:
    """Refuse a width (a number, or `%N` inside a format string) that would build a huge string."""
    for value in values:
        widths = [int(w) for w in _WIDTH_IN_FORMAT.findall(value)] if isinstance(value, str) else [value]
        too_wide = [
            w for w in widths if isinstance(w, int) and not isinstance(w, bool) and w > MAX_TEXT_CHARS
        ]
        if too_wide:
            raise SecurityError(f"a width of {too_wide[0]:,} is over the {MAX_TEXT_CHARS:,} limit")


def _width_checked(filter_function: Callable[..., Any]) -> Callable[..., Any]:
    """A padding filter that refuses huge widths (keeps Jinja's pass_environment marker)."""

    @functools.wraps(filter_function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        _check_widths(*args, *kwargs.values())
        return filter_function(*args, **kwargs)

    return checked


TEMPLATE_GLOBALS: dict[str, Any] = {"range": _budgeted_range, "dict": dict}


class FieldEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox: payload fields before attributes, and no runaway arithmetic."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, finalize: Escape | None = None) -> None:
        super().__init__(
            undefined=_StrictField,
            autoescape=False,
            finalize=(lambda value: finalize(str(value))) if finalize else None,
        )
        self.globals = dict(TEMPLATE_GLOBALS)
        for name in ("center", "indent", "format", "wordwrap", "truncate"):
            self.filters[name] = _width_checked(self.filters[name])

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if super().wrap_str_format(value) is None:
            return None

        def refused(*args: Any, **kwargs: Any) -> str:
            raise SecurityError("str.format() is not available in templates; join text with ~")

        return refused

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, jinja2.Undefined):  # report the first missing piece of a path
            obj._fail_with_undefined_error()
        if isinstance(obj, Mapping):
            if attribute in obj:
                return obj[attribute]
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in _PADDING_METHODS:
            return False
        return bool(super().is_safe_attribute(obj, attr, value))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "%":
            if isinstance(left, str):
                _check_widths(left)
            return left % right
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is over the limit of {MAX_EXPONENT}")
            return left**right
        for seq, count in ((left, right), (right, left)):
            if (
                isinstance(seq, str | list | tuple)
                and isinstance(count, int)
                and len(seq) * count > MAX_TEXT_CHARS
            ):
                raise SecurityError(
                    f"repeating {len(seq):,} items {count:,} times is over the {MAX_TEXT_CHARS:,} limit"
                )
        return left * right


_plain = FieldEnvironment()
_escaping_envs: dict[Escape, FieldEnvironment] = {}


def environment(escape: Escape | None = None) -> FieldEnvironment:
    if escape is None:
        return _plain
    if escape not in _escaping_envs:
        _escaping_envs[escape] = FieldEnvironment(finalize=escape)
    return _escaping_envs[escape]


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
        template, native = _compiled(environment(escape), value, escape is None)
    except jinja2.TemplateSyntaxError as exc:
        problems.append(TemplateProblem(loc, f"template syntax error: {exc.message}", exc.lineno))
        return ParamTemplate(lambda ctx: value)
    if native:
        return ParamTemplate(lambda ctx: _native(_evaluate(template, ctx)))
    return ParamTemplate(lambda ctx: _checked_text(_render_text(template, ctx)))


@functools.lru_cache(maxsize=4096)
def _compiled(env: FieldEnvironment, source: str, native: bool) -> tuple[jinja2.Template, bool]:
    """The template of `source`, parsed once; True when it is one expression keeping its type.

    Cached: rules generated from a list (one per item or site) share their templates,
    and a compiled template is only ever read.
    """
    parsed = env.parse(source)
    expression = _single_expression(parsed) if native else None
    if expression is not None:
        # `{% set result = <expression> %}`, built from the parsed tree: the value keeps its type.
        assign = nodes.Template([nodes.Assign(nodes.Name("result", "store"), expression)])
        return _acyclic(env.from_string(assign)), True
    return _acyclic(env.from_string(parsed)), False


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
    return jinja_context.vars["result"]


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
    """Render with a fresh runaway budget; every failure becomes a `TemplateRenderError`."""
    token = _range_budget.set([MAX_RANGE_ITEMS])
    if "range" not in context:
        context = with_globals(context)
    try:
        return template.render(context)
    except MissingField as exc:
        raise TemplateRenderError(_describe_missing(exc, context)) from None
    except TemplateRenderError:
        raise
    except SecurityError as exc:
        raise TemplateRenderError(f"template stopped: {exc}") from None
    except (jinja2.TemplateError, ArithmeticError, AttributeError, TypeError, ValueError, LookupError) as exc:
        raise TemplateRenderError(f"template failed: {type(exc).__name__}: {exc}") from None
    finally:
        _range_budget.reset(token)


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
        keys = sorted(str(key) for key in exc.owner)
        hint = _did_you_mean(exc.name, keys, prefix=f"{owner_path}.")
        holds = f" ({owner_path} has: {', '.join(keys[:20])})" if keys else f" ({owner_path} is empty)"
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
