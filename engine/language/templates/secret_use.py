"""Secrets are used as they are: the load-time check of where a template reads `secrets`.

A secret's value is masked (`***`) wherever the engine shows it, by looking for the
value itself. A transformed value (`| upper`, a slice, `| urlencode`) would not be
found, so a template may read `secrets.NAME` (or `secrets['NAME']`) only where its
value reaches the output unchanged:

- directly in the text: `Bearer {{ secrets.TOKEN }}`, or the whole param `{{ secrets.URL }}`;
- as a part joined with `~`: `{{ 'Bearer ' ~ secrets.TOKEN }}`;
- as a branch of an inline if: `{{ secrets.A if data.live else secrets.B }}`;
- inside `{% if %}`, `{% for %}` (not recursive) and `{% with %}` blocks.

Anything else is refused when the rule loads, with the template line: a filter, test,
method call, index or slice, arithmetic, comparison, a condition or loop over it,
storing it in a variable, and output inside a macro, call, filter or set block
(whose text can be transformed afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import nodes

_BUFFERED = (nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.AssignBlock, nodes.Block)


@dataclass(frozen=True, slots=True)
class SecretMisuse:
    line: int
    message: str


def secret_misuses(template: nodes.Template) -> list[SecretMisuse]:
    """Every place `template` reads `secrets` other than as it is."""
    found: list[SecretMisuse] = []
    for statement in template.body:
        _visit(statement, allowed=False, buffered=False, where="", found=found)
    return found


def _secret_name(node: nodes.Node) -> str | None:
    """NAME when `node` is `secrets.NAME` or `secrets['NAME']`."""
    if isinstance(node, nodes.Getattr) and _is_secrets(node.node):
        return node.attr
    if (
        isinstance(node, nodes.Getitem)
        and _is_secrets(node.node)
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
    ):
        return node.arg.value
    return None


def _is_secrets(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "secrets" and node.ctx == "load"


def _visit(node: nodes.Node, *, allowed: bool, buffered: bool, where: str, found: list[SecretMisuse]) -> None:
    name = _secret_name(node)
    if name is not None or _is_secrets(node):
        if not allowed or name is None:  # `secrets` alone is every secret at once
            found.append(SecretMisuse(node.lineno, _message(name, where)))
        return
    if isinstance(node, nodes.Output):
        shown_in = "the output of a macro or block (it can be changed later)" if buffered else "the text"
        for child in node.nodes:
            _visit(child, allowed=not buffered, buffered=buffered, where=shown_in, found=found)
        return
    if isinstance(node, nodes.Concat | nodes.CondExpr):
        passes = [node.expr1, node.expr2] if isinstance(node, nodes.CondExpr) else node.nodes
        for part in node.iter_child_nodes():
            keeps = any(part is kept for kept in passes)
            condition = where if keeps else "the condition of an inline if"
            _visit(part, allowed=allowed and keeps, buffered=buffered, where=condition, found=found)
        return
    recursive = isinstance(node, nodes.For) and node.recursive
    body_buffered = buffered or isinstance(node, _BUFFERED) or recursive
    bodies = _bodies(node)
    for inner in node.iter_child_nodes():
        if any(inner is statement for statement in bodies):
            _visit(inner, allowed=False, buffered=body_buffered, where=where, found=found)
        else:
            _visit(inner, allowed=False, buffered=buffered, where=_describe(node), found=found)


def _bodies(node: nodes.Node) -> list[nodes.Node]:
    """The statements `node` holds (whose output is the template's), as opposed to its expressions."""
    statements: list[nodes.Node] = []
    for field in ("body", "else_", "elif_"):
        value = getattr(node, field, None)
        if isinstance(value, list) and isinstance(node, nodes.Stmt):
            statements += value
    return statements


def _describe(node: nodes.Node) -> str:
    if isinstance(node, nodes.Filter):
        return f"the filter | {node.name}"
    if isinstance(node, nodes.Test):
        return f"the test 'is {node.name}'"
    descriptions: list[tuple[type[nodes.Node] | tuple[type[nodes.Node], ...], str]] = [
        (nodes.Call, "a call"),
        (nodes.Getattr, "an attribute or method of it"),
        ((nodes.Getitem, nodes.Slice), "an index or slice"),
        ((nodes.BinExpr, nodes.UnaryExpr), "arithmetic (join text with ~ instead)"),
        (nodes.Compare, "a comparison"),
        ((nodes.If, nodes.CondExpr), "a condition"),
        (nodes.For, "a loop"),
        ((nodes.Assign, nodes.With, nodes.AssignBlock, nodes.Keyword), "a variable or argument"),
        ((nodes.List, nodes.Tuple, nodes.Dict, nodes.Pair), "a list or object"),
    ]
    for kinds, text in descriptions:
        if isinstance(node, kinds):
            return text
    return f"a {type(node).__name__.lower()} expression"


def _message(name: str | None, where: str) -> str:
    if name is None:
        what = "secrets may only be read one at a time, as it is: {{ secrets.NAME }}"
        found = f"found secrets on its own in {where}"
    else:
        written = f"{{{{ secrets.{name} }}}}"
        what = f"secrets.{name} may only be used as it is: {written} in the text, or joined with ~"
        found = f"found it in {where}"
    return (
        f"{what}; {found}. A transformed secret would show unmasked in logs; "
        "where a param needs it transformed, ask for the action to do it"
    )
