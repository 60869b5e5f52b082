"""Which payload fields and secrets a rule reads, and where in its file: what `check` compares
with the field catalog (engine.language.field_catalog).

Conditions are walked as the JsonLogic they run as (an expression's compiled JsonLogic
too): each `var` is a read, located by its path inside the condition. Inside
`some`/`all`/`none`/`map`/`filter`/`reduce` a read is of each item of the list
(`data.items[].sku`). Templates are walked as Jinja's syntax tree: a dotted name from
`data` or `payload`, a `{% for item in data.items %}` variable, `map(attribute=...)`;
`secrets.NAME` is a secret read. A read whose path cannot be known (a computed index,
a variable set in the template) is left out: a warning is never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import jinja2
from jinja2 import nodes

from engine.language.field_catalog import EACH, Segments
from engine.language.sources import JsonPath
from engine.language.templates import environment, has_template_syntax

CONTEXT_FIELDS = ("event", "timestamp", "delivery_id")  # context names that are not payload fields
SCOPED = frozenset({"some", "all", "none", "map", "filter"})
EQUALITY = frozenset({"==", "!=", "===", "!=="})
_NO_VALUE = object()


@dataclass(frozen=True, slots=True)
class FieldRead:
    """A payload field read at `loc` (inside the condition, or the template's param); `offset` is
    where it starts inside a template, None in a condition.

    `path` is None when the read names no context field (`{"var": "quantity"}`: `bare`).
    `compared` is the written value it is compared with by `operator` (== != === !==).
    """

    path: Segments | None
    written: str
    loc: JsonPath
    offset: int | None = None
    operator: str | None = None
    compared: Any = _NO_VALUE
    node: JsonPath | None = None  # the `var` object's own loc in the condition
    default: Any = _NO_VALUE  # the value written for when the field is missing

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_VALUE

    @property
    def is_compared(self) -> bool:
        return self.compared is not _NO_VALUE


@dataclass(frozen=True, slots=True)
class SecretRead:
    name: str
    loc: JsonPath
    offset: int


def resolve(path: str) -> Segments | None:
    """A condition's absolute `var` path as a catalog path; None when it is no payload field.

    `payload.data.x` is `data.x`; `event`, `timestamp` and `delivery_id` are not fields.
    """
    keys = path.split(".")
    if keys[0] == "data":
        return tuple(keys)
    if keys[0] == "payload" and len(keys) > 1:
        return tuple(keys[1:]) if keys[1] == "data" else tuple(keys)
    return None


# ------------------------------------------------------------------ conditions


def condition_reads(logic: Any) -> list[FieldRead]:
    """Every field `logic` reads, each at its loc inside the condition."""
    found: list[FieldRead] = []
    _walk_logic(logic, (), None, "", found)
    return found


def _walk_logic(
    logic: Any, loc: JsonPath, scope: Segments | None, prefix: str, found: list[FieldRead]
) -> None:
    """`scope` is the list path inside an item scope (`("data", "items", "[]")`); `prefix` is
    "current" inside reduce's step. Inside a scope whose list is not known, scope is `()`."""
    if isinstance(logic, list):
        for index, item in enumerate(logic):
            _walk_logic(item, (*loc, index), scope, prefix, found)
        return
    if not (isinstance(logic, dict) and len(logic) == 1):
        return
    ((op, args),) = logic.items()
    items = args if isinstance(args, list) else [args]
    here: JsonPath = (*loc, op)

    def at(index: int) -> JsonPath:
        return (*here, index) if isinstance(args, list) else here

    if op == "var":
        read = _var_read(items, here, scope, prefix)
        if read is not None:
            found.append(read)
        return
    if op in ("missing", "missing_some") and scope is None:
        names = items[1] if op == "missing_some" and len(items) > 1 else items
        base = (*here, 1) if op == "missing_some" else here
        for index, name in enumerate(names if isinstance(names, list) else []):
            if isinstance(name, str) and name:
                found.append(
                    FieldRead(resolve(name), name, (*base, index) if isinstance(args, list) else base)
                )
        return
    if (op in SCOPED or op == "reduce") and isinstance(args, list) and args:
        _walk_logic(args[0], at(0), scope, prefix, found)
        inner = _list_path(args[0], scope, prefix)
        for index, item in enumerate(args[1:], start=1):
            if op == "reduce" and index == 2:
                _walk_logic(item, at(index), scope, prefix, found)
            else:
                _walk_logic(item, at(index), inner, "current" if op == "reduce" else "", found)
        return
    for index, item in enumerate(items):
        before = len(found)
        _walk_logic(item, at(index), scope, prefix, found)
        if op in EQUALITY and len(items) == 2 and len(found) == before + 1 and _is_var(item):
            other = items[1 - index]
            if other is not None and not isinstance(other, dict | list):
                found[-1] = replace(found[-1], operator=op, compared=other)


def _is_var(logic: Any) -> bool:
    return isinstance(logic, dict) and list(logic) == ["var"]


def _var_read(items: list[Any], loc: JsonPath, scope: Segments | None, prefix: str) -> FieldRead | None:
    path = items[0] if items else ""
    if not isinstance(path, str) or not path:
        return None  # a computed path, or the whole item / context
    where = (*loc, 0) if len(items) > 1 else loc
    if scope is None:
        resolved = resolve(path)
        if resolved is None and path.split(".")[0] in (*CONTEXT_FIELDS, "payload"):
            return None
        default = items[1] if len(items) == 2 else _NO_VALUE
        return FieldRead(resolved, path, where, node=loc[:-1], default=default)
    if not scope:
        return None  # inside a scope over a list that is not a field
    keys = path.split(".")
    if prefix:
        if keys[0] != prefix:
            return None  # the accumulator
        keys = keys[1:]
    return FieldRead((*scope, *keys), path, where, node=loc[:-1]) if keys else None


def _list_path(source: Any, scope: Segments | None, prefix: str) -> Segments:
    """The item path inside a scope over `source`; `()` when the list is not a plain field."""
    if _is_var(source):
        args = source["var"]
        read = _var_read(args if isinstance(args, list) else [args], (), scope, prefix)
        if read is not None and read.path is not None:
            return (*read.path, EACH)
    return ()


# ------------------------------------------------------------------ templates


def template_strings(value: Any, loc: JsonPath) -> Iterator[tuple[JsonPath, str]]:
    """Every string holding template syntax inside a param value, with its loc."""
    if isinstance(value, str):
        if has_template_syntax(value):
            yield loc, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from template_strings(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from template_strings(item, (*loc, index))


def template_reads(source: str, loc: JsonPath) -> tuple[list[FieldRead], list[SecretRead]]:
    """The fields and secrets one template reads; nothing when it does not parse (check says so)."""
    try:
        parsed = environment().parse(source)
    except jinja2.TemplateSyntaxError:
        return [], []
    walker = _TemplateWalker(source, loc)
    walker.visit(parsed, {})
    return walker.fields, walker.secrets


class _TemplateWalker:
    def __init__(self, source: str, loc: JsonPath) -> None:
        self.source = source
        self.loc = loc
        self.line_starts = [0, *(m.end() for m in re.finditer("\n", source))]
        self.fields: list[FieldRead] = []
        self.secrets: list[SecretRead] = []

    def visit(self, node: nodes.Node, loops: dict[str, Segments]) -> None:
        if isinstance(node, nodes.For):
            self.visit(node.iter, loops)
            items = self.path_of(node.iter, loops)
            inner = dict(loops)
            if isinstance(node.target, nodes.Name):
                if items is not None:
                    inner[node.target.name] = (*items[0], EACH)
                else:
                    inner.pop(node.target.name, None)
            for child in [*node.body, *node.else_]:
                self.visit(child, inner)
            if node.test is not None:
                self.visit(node.test, inner)
            return
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            # data.name.upper(): a method of the value, not a field
            self.visit(node.node.node, loops)
            for child in [*node.args, *node.kwargs]:
                self.visit(child, loops)
            return
        if isinstance(node, nodes.Filter) and node.name == "map" and node.node is not None:
            self._mapped(node, loops)
        found = self.path_of(node, loops) if isinstance(node, nodes.Getattr | nodes.Getitem) else None
        if found is not None:
            self.record(node, *found)
            return
        secret = _secret_name(node)
        if secret is not None:
            self.secrets.append(SecretRead(secret, self.loc, self.offset(node, "secrets", secret)))
            return
        for child in node.iter_child_nodes():
            self.visit(child, loops)

    def _mapped(self, node: nodes.Filter, loops: dict[str, Segments]) -> None:
        """`data.items | map(attribute='name')` reads the name of each item."""
        attribute = next((k.value for k in node.kwargs if k.key == "attribute"), None)
        items = self.path_of(node.node, loops) if node.node is not None else None
        if items is not None and isinstance(attribute, nodes.Const) and isinstance(attribute.value, str):
            path = (*items[0], EACH, *attribute.value.split("."))
            self.fields.append(FieldRead(path, attribute.value, self.loc, self.offset(node, attribute.value)))

    def path_of(self, node: nodes.Node, loops: dict[str, Segments]) -> tuple[Segments, list[str]] | None:
        """(the catalog path, the names as written) of a dotted read; None when it is no field."""
        keys: list[str] = []
        while isinstance(node, nodes.Getattr | nodes.Getitem):
            if isinstance(node, nodes.Getattr):
                keys.append(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str | int):
                keys.append(str(node.arg.value))
            else:
                self.visit(node.arg, loops)
                return None
            node = node.node
        if not isinstance(node, nodes.Name):
            return None
        keys.reverse()
        if node.name in loops:
            return (*loops[node.name], *keys), [node.name, *keys]
        if node.name == "data":
            return ("data", *keys), ["data", *keys]
        if node.name == "payload" and keys:
            path = ("data", *keys[1:]) if keys[0] == "data" else ("payload", *keys)
            return path, ["payload", *keys]
        return None

    def record(self, node: nodes.Node, path: Segments, names: list[str]) -> None:
        written = names[0] + "".join(f"[{n}]" if n.isdigit() else f".{n}" for n in names[1:])
        self.fields.append(FieldRead(path, written, self.loc, self.offset(node, *names)))

    def offset(self, node: nodes.Node, *names: str) -> int:
        """Where the read starts in the template: its names searched for from its line."""
        line = min(max(node.lineno, 1), len(self.line_starts))
        start = self.line_starts[line - 1]
        pattern = r"\s*".join(
            [
                re.escape(names[0]),
                *(rf"(?:\.\s*{re.escape(n)}|\[\s*['\"]?{re.escape(n)}['\"]?\s*\])" for n in names[1:]),
            ]
        )
        match = re.compile(rf"(?<![\w.]){pattern}").search(self.source, start)
        return match.start() if match else start


def _secret_name(node: nodes.Node) -> str | None:
    if not (isinstance(node, nodes.Getattr | nodes.Getitem) and isinstance(node.node, nodes.Name)):
        return None
    if node.node.name != "secrets":
        return None
    if isinstance(node, nodes.Getattr):
        return node.attr
    return node.arg.value if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) else None
