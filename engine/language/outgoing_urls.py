"""Where an action's requests may go: decided from the rule's text, checked again per delivery.

A delivery must never choose the scheme, host or port of a request (or the database an
action writes to). When rules load, the syntax tree of every URL param marked
`OutgoingURL` is read in output order: literal text, `{{ secrets.NAME }}` and quoted
constants are configuration, anything else (a value from the delivery, a filter, any
`{% %}` tag, a macro call) is not. An HTTP URL must close its origin (`scheme://host:port`)
with a `/`, `?` or `#` written in the rule before the first node that is not
configuration; a database URL must be configuration throughout.

What the rule allows is kept as `OriginParts`, the configuration-only start of the URL.
For every delivery the start is rendered with the same secrets, and the rendered URL
must have the origin that start has (`check_rendered`); the origins allowed reach
`send_request` through the action's context (`allowed_origins`), which refuses any
other.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes

from actions.base import Action, Origin, OutgoingURL
from engine.language.templates import environment, has_template_syntax
from engine.secrets import MASK

_EXAMPLE = "e.g. 'https://crm.example.com/items/{{ data.id }}'"
_ORIGIN_ENDS = "/?#"
_TAGS: dict[type[nodes.Node], str] = {
    nodes.If: "if",
    nodes.For: "for",
    nodes.With: "with",
    nodes.FilterBlock: "filter",
    nodes.Macro: "macro",
    nodes.CallBlock: "call",
    nodes.Assign: "set",
    nodes.AssignBlock: "set",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from",
    nodes.Extends: "extends",
    nodes.Block: "block",
    nodes.Scope: "autoescape",
}


@dataclass(frozen=True, slots=True)
class SecretPart:
    """`{{ secrets.NAME }}` in the configuration-only start of a URL."""

    name: str


# The configuration-only start of a URL: literal text and secrets, in order.
OriginParts = tuple[str | SecretPart, ...]


@dataclass(frozen=True, slots=True)
class URLProblem:
    """Why a URL template is refused, and the line of the template it was found on."""

    message: str
    line: int = 1


def check_url(value: str, *, http: bool) -> tuple[OriginParts | None, URLProblem | None]:
    """The configuration-only start of an outgoing URL, or why the URL is refused.

    `http=False` (a database URL): all of it must be configuration. (None, None) when the
    template does not parse: that is reported as a syntax error already.
    """
    if not has_template_syntax(value):
        return (value,), None
    try:
        tree = environment().parse(value)
    except jinja2.TemplateSyntaxError:
        return None, None
    problem = _rebinds_secrets(tree)
    if problem is not None:
        return None, problem
    parts: list[str | SecretPart] = []
    scan = _Scan()
    for item in _output(tree):
        if isinstance(item, nodes.Node):
            if http and scan.state == "closed":
                break  # the origin is settled: the rest is path, query and fragment
            return None, _refusal(item, scan, parts, http=http)
        parts.append(item)
        if isinstance(item, SecretPart):
            scan.secret(item)
        else:
            scan.text(item)
    return tuple(parts), None


def origin_of(parts: OriginParts, secrets: Mapping[str, str]) -> tuple[str, Origin | None]:
    """The configuration-only start rendered with `secrets`, and its origin (None: it has none)."""
    start = "".join(part if isinstance(part, str) else secrets[part.name] for part in parts)
    return start, _start(start)[0]


@functools.lru_cache(maxsize=1024)
def _start(start: str) -> tuple[Origin | None, bool]:
    """The origin of a start of a URL, and whether the start also ends it (a / ? or # after the host).

    Starts and defaults are configuration: a handful of texts, parsed once each, not per delivery.
    A URL that begins with a start that ends its origin has that origin: httpx (and RFC 3986)
    read the authority as what follows `//` up to the first `/`, `?` or `#`.
    """
    origin = Origin.of(start)
    scheme_end = start.find("://")
    return origin, origin is not None and any(c in start[scheme_end + 3 :] for c in "/?#")


def check_rendered(
    allowed: Mapping[str, OriginParts],
    rendered: Mapping[str, Any],
    secrets: Mapping[str, str],
    *,
    dry_run: bool = False,
) -> tuple[dict[str, Origin], str | None]:
    """The origin each rendered URL may go to, or why one goes elsewhere.

    In a dry run a URL holding the placeholder of an unset secret (`***`) is taken as it is.
    """
    origins: dict[str, Origin] = {}
    for name, parts in allowed.items():
        url = rendered.get(name)
        if not isinstance(url, str) or not url:
            continue  # not given: the action falls back on configuration
        if dry_run and MASK in url:
            continue
        start, origin = origin_of(parts, secrets)
        if origin is None:
            # No "https" in the text: a secret holding just the scheme would mask it.
            return origins, (
                f"{name}: refused, nothing sent: the start of the URL that comes from the rule and "
                "its secrets has no scheme and host of its own, so the delivery would choose where "
                "the request goes; write the scheme and host in the rule or in the secret"
            )
        target = origin if url.startswith(start) and _start(start)[1] else Origin.of(url)
        if target != origin:
            where = "no usable address" if target is None else f"{target}"
            return origins, (
                f"{name}: refused, nothing sent: it goes to {where}, but the rule and its secrets "
                f"allow only {origin}; a value from the delivery changed the scheme, host or port; "
                f"end the host with a / written in the rule, {_EXAMPLE}"
            )
        origins[name] = origin
    return origins, None


def allowed_origins(
    plugin: Action[Any], rendered: Mapping[str, Origin], settings: Mapping[str, str | int | None]
) -> frozenset[Origin]:
    """Every origin one run of an action may send to: its rendered URLs', else its settings'.

    `settings`: the values of the action's own settings (`ActionContext.settings`).
    """
    allowed = set(rendered.values())
    for name, variable in _defaults_of(type(plugin)):
        value = settings.get(variable)
        if name not in rendered and isinstance(value, str):
            origin = _start(value)[0]
            if origin is not None:
                allowed.add(origin)
    return frozenset(allowed)


@functools.cache
def _defaults_of(plugin: type[Action[Any]]) -> tuple[tuple[str, str], ...]:
    """(param, setting variable) for each outgoing URL param that falls back on a setting."""
    return tuple(
        (field.alias or name, marker.default.variable)
        for name, field in plugin.Params.model_fields.items()
        for marker in field.metadata
        if isinstance(marker, OutgoingURL) and marker.default
    )


def _output(tree: nodes.Template) -> Iterator[str | SecretPart | nodes.Node]:
    """The template's top level in output order: text and secrets, or the node that is neither."""
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            yield node
            continue
        for child in node.nodes:
            yield _configuration(child) or child


def _configuration(node: nodes.Expr) -> str | SecretPart | None:
    if isinstance(node, nodes.TemplateData):
        return node.data
    if (
        isinstance(node, nodes.Const)
        and isinstance(node.value, str | int)
        and not isinstance(node.value, bool)
    ):
        return str(node.value)
    if isinstance(node, nodes.Getattr) and _is_secrets(node.node):
        return SecretPart(node.attr)
    if (
        isinstance(node, nodes.Getitem)
        and _is_secrets(node.node)
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
    ):
        return SecretPart(node.arg.value)
    return None


def _is_secrets(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "secrets" and node.ctx == "load"


def _rebinds_secrets(tree: nodes.Template) -> URLProblem | None:
    """`{% set secrets = data %}` and the like would make `secrets.NAME` read the delivery."""
    for node in tree.find_all((nodes.Name, nodes.Import, nodes.FromImport)):
        if isinstance(node, nodes.Name):
            rebinds = node.name == "secrets" and node.ctx != "load"
        elif isinstance(node, nodes.Import):
            rebinds = node.target == "secrets"
        elif isinstance(node, nodes.FromImport):
            rebinds = any((n if isinstance(n, str) else n[1]) == "secrets" for n in node.names)
        else:
            rebinds = False
        if rebinds:
            return URLProblem(
                "expected 'secrets' to stay the secrets in an address, found it given another value "
                "in the template; use another name",
                node.lineno or 1,
            )
    for extends in tree.find_all(nodes.Extends):
        return URLProblem(
            "expected an address, found {% extends %}; write the address out", extends.lineno or 1
        )
    return None


class _Scan:
    """Where the text so far has got to in a URL, as far as the rule's own text tells.

    `start`: before any `://`; `secret`: after a secret, position unknown; `host`: inside the
    authority (userinfo, host, port); `closed`: past the origin; `broken`: a `/`, `?` or
    `#` came where no origin can have been (no scheme, or no host).
    """

    def __init__(self) -> None:
        self.state = "start"
        self.host_seen = False
        self.last_secret: SecretPart | None = None

    def secret(self, part: SecretPart) -> None:
        self.last_secret = part
        if self.state == "start":
            self.state = "secret"
        elif self.state == "host":
            self.host_seen = True

    def text(self, data: str) -> None:
        index = 0
        while index < len(data) and self.state in ("start", "secret", "host"):
            if self.state != "host" and data.startswith("://", index):
                self.state, self.host_seen = "host", False
                index += 3
                continue
            if data[index] in _ORIGIN_ENDS:
                if self.state == "host":
                    self.state = "closed" if self.host_seen else "broken"
                else:
                    self.state = "closed" if self.state == "secret" else "broken"
            elif self.state == "host":
                self.host_seen = True
            index += 1


def _refusal(node: nodes.Node, scan: _Scan, parts: list[str | SecretPart], *, http: bool) -> URLProblem:
    what = _describe(node)
    if not http:
        return URLProblem(
            f"expected the database URL written in the rule (or taken from secrets), found {what}; "
            "write it out or use {{ secrets.NAME }}, with nothing from the delivery in it",
            node.lineno or 1,
        )
    written = "".join(p if isinstance(p, str) else "{{ secrets.%s }}" % p.name for p in parts)  # noqa: UP031
    fix = f"write the scheme and host out and end them with /, ? or #, {_EXAMPLE}"
    if scan.state == "start":
        where = "where the URL starts" if not written else f"after '{written[:60]}', before its '://'"
    elif scan.state == "secret":
        assert scan.last_secret is not None
        secret = f"{{{{ secrets.{scan.last_secret.name} }}}}"
        where = f"right after {secret}"
        fix = f"write a / between them, e.g. '{secret}/{what}'" if what.startswith("{{") else fix
    elif scan.state == "host":
        where = "before the host ends"
    else:
        where = f"after '{written[:60]}', which has no scheme and host before its first /"
    return URLProblem(
        f"expected the URL's host written in the rule (or taken from secrets), found {what} {where}; {fix}",
        node.lineno or 1,
    )


def _describe(node: nodes.Node) -> str:
    tag = next((name for kind, name in _TAGS.items() if isinstance(node, kind)), None)
    if tag is not None:
        return f"a {{% {tag} %}} tag"
    if isinstance(node, nodes.Stmt):
        return f"a {{% {type(node).__name__.lower()} %}} tag"
    return f"{{{{ {_expression(node)} }}}}"


def _expression(node: nodes.Node, depth: int = 0) -> str:
    """A short rendering of an expression for messages (`data.host`, `name | lower`)."""
    if depth > 4:
        return "…"
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        return f"{_expression(node.node, depth + 1)}.{node.attr}"
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        return f"{_expression(node.node, depth + 1)}[{node.arg.value!r}]"
    if isinstance(node, nodes.Filter) and node.node is not None:
        return f"{_expression(node.node, depth + 1)} | {node.name}"
    if isinstance(node, nodes.Call):
        return f"{_expression(node.node, depth + 1)}(…)"
    if isinstance(node, nodes.Const):
        return repr(node.value)[:40]
    if isinstance(node, nodes.Concat):
        return " ~ ".join(_expression(item, depth + 1) for item in node.nodes)
    return "…"
