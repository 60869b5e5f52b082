"""Property-based tests of templates: payload text is never evaluated, and every runaway limit holds.

The second test builds random templates from the operations that can amplify a
value (repetition, `~` and `+`, `%` widths and precisions, replace, join, batch,
slice, center, indent, wordwrap, list, split, sum, escaping, JSON...) nested in
each other, with numbers from 0 to 10**9, and renders each one with memory traced:
it either renders within the limits or fails with a `TemplateRenderError`, never
with another exception, never allocating more than `MAX_PEAK_BYTES`, and never
running much past the time limit.
"""

from __future__ import annotations

import time
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import TemplateRenderError
from engine.language.templates import compile_value, render
from engine.language.templates.budget import MAX_ITEMS, MAX_RENDER_SECONDS, MAX_TEXT_CHARS, measure
from engine.secrets import Secrets
from tests.examples import examples

MAX_PEAK_BYTES = 64 * 2**20
SETTINGS = settings(
    max_examples=examples(200, 1000),  # the amplifying operations: ~0.2 s an example
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _context(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": "item.updated",
        "delivery_id": "d-1",
        "timestamp": "2026-03-01T09:00:00Z",
        "data": data,
        "payload": {"data": data},
        "secrets": Secrets({"CRM_TOKEN": "crm-token-value"}),
        "now": datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
    }


# --- payload text is data --------------------------------------------------------------

TEMPLATE_SYNTAX = ["{{", "}}", "{%", "%}", "{#", "#}", "7*7", "data.v", "secrets.CRM_TOKEN", "range(10**9)"]
PAYLOAD_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=60),
    st.lists(
        st.sampled_from([*TEMPLATE_SYNTAX, " ", "x", "'", '"', "\\", "|", "~", "\n", "<b>", "&"]), max_size=20
    ).map("".join),
)
# (template, what it renders a payload text `v` to)
ECHOES = [
    ("{{ data.v }}", lambda v: v),
    ("<{{ data.v }}>", lambda v: f"<{v}>"),
    ("{{ data.v ~ '!' }}", lambda v: f"{v}!"),
    ("{{ data.nested.v }}", lambda v: v),
    ("{% for t in [data.v] %}[{{ t }}]{% endfor %}", lambda v: f"[{v}]"),
    ("{{ [data.v, data.v] | join('|') }}", lambda v: f"{v}|{v}"),
    ("{{ data.v | string }}", lambda v: v),
    ("{{ data.list }}", lambda v: [v, v]),
    ("{{ data.v if true else 'no' }}", lambda v: v),
]
_echo_templates = [(compile_value(source)[0], expected) for source, expected in ECHOES]


@settings(SETTINGS, max_examples=examples(1_000, 5_000))
@given(text=PAYLOAD_TEXT, echo=st.sampled_from(range(len(ECHOES))))
def test_payload_text_is_never_evaluated(text: str, echo: int) -> None:
    template, expected = _echo_templates[echo]
    context = _context({"v": text, "nested": {"v": text}, "list": [text, text]})
    assert render(template, context) == expected(text)


# --- every limit holds -----------------------------------------------------------------

NUMBERS = st.sampled_from(
    [0, 1, 2, 3, 7, 100, 999, 4_000, 10**4, 99_999, 10**5, 10**6, 3 * 10**6, 10**8, 10**9]
)
LEAVES = st.sampled_from(
    [
        "'x'",
        "'ab<'",
        "'a b '",
        "'x\\n'",
        "data.text",
        "data.items",
        "[1, 2, 3]",
        "range(100)",
        "10 ** 200",
        "now",
    ]
)


def _amplified(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(inner, inner)
    with_number = st.tuples(inner, NUMBERS)
    return st.one_of(
        with_number.map(lambda t: f"({t[0]}) * {t[1]}"),
        with_number.map(lambda t: f"[{t[0]}] * {t[1]}"),
        with_number.map(lambda t: f"({t[0]}) ** {t[1] % 300}"),
        pair.map(lambda t: f"({t[0]}) ~ ({t[1]})"),
        pair.map(lambda t: f"({t[0]}) + ({t[1]})"),
        NUMBERS.map(lambda n: f"'%*d' % ({n}, 1)"),
        NUMBERS.map(lambda n: f"'%.{n}f' % 1.5"),
        with_number.map(lambda t: f"'%-{t[1]}s|%s' % (({t[0]}), ({t[0]}))"),
        pair.map(lambda t: f"({t[0]}) | replace('', {t[1]})"),
        pair.map(lambda t: f"({t[0]}) | replace('x', {t[1]})"),
        pair.map(lambda t: f"({t[0]}) | string | replace(' ', {t[1]} | string)"),
        pair.map(lambda t: f"({t[1]} | string).replace('', ({t[0]}) | string)"),
        pair.map(lambda t: f"({t[0]}) | join({t[1]} | string)"),
        pair.map(lambda t: f"({t[1]} | string).join(({t[0]}) | map('string'))"),
        with_number.map(lambda t: f"({t[0]}) | batch({t[1]}, 'fill') | list"),
        with_number.map(lambda t: f"({t[0]}) | slice({t[1]}, 'fill') | list"),
        with_number.map(lambda t: f"({t[0]}) | center({t[1]})"),
        with_number.map(lambda t: f"({t[0]}) | indent({t[1]}, true, true)"),
        with_number.map(lambda t: f"({t[0]}) | wordwrap(1, wrapstring='{'y' * (t[1] % 5000)}')"),
        with_number.map(lambda t: f"({t[0]}) | truncate({max(t[1], 3)}, end='...')"),
        pair.map(lambda t: f"'%s%s' | format({t[0]}, {t[1]})"),
        inner.map(lambda e: f"({e}) | list"),
        inner.map(lambda e: f"({e}) | string | list"),
        inner.map(lambda e: f"(({e}) | string).split()"),
        inner.map(lambda e: f"({e}) | string | urlencode | urlencode"),
        inner.map(lambda e: f"({e}) | string | escape | string | escape"),
        inner.map(lambda e: f"({e}) | tojson | tojson"),
        inner.map(lambda e: f"({e}) | string | upper"),
        inner.map(lambda e: f"({e}) | batch(1) | sum(start=[])"),
        inner.map(lambda e: f"({e}) | string | wordcount"),
    )


EXPRESSIONS = st.recursive(LEAVES, _amplified, max_leaves=5)
TEMPLATES = st.one_of(
    EXPRESSIONS.map(lambda e: "{{ " + e + " }}"),
    EXPRESSIONS.map(lambda e: "text {{ " + e + " }}"),
    st.tuples(EXPRESSIONS, NUMBERS).map(
        lambda t: f"{{% for i in range({t[1]}) %}}{{{{ {t[0]} }}}}{{% endfor %}}"
    ),
    st.tuples(EXPRESSIONS, EXPRESSIONS).map(
        lambda t: (
            f"{{% for a in ({t[0]}) | string %}}{{% for b in ({t[1]}) | string %}}{{% endfor %}}{{% endfor %}}"
        )
    ),
    EXPRESSIONS.map(lambda e: f"{{% macro m(n) %}}{{{{ m(n ~ ({e})) }}}}{{% endmacro %}}{{{{ m('') }}}}"),
)
_LIMIT_CONTEXT = _context({"text": "word " * 2_000, "items": [{"sku": f"S-{i}"} for i in range(1_000)]})


@pytest.mark.timeout(900)
@SETTINGS
@given(source=TEMPLATES)
def test_every_limit_holds_for_any_mix_of_amplifying_operations(source: str) -> None:
    template, problems = compile_value(source)
    assert problems == []
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = render(template, _LIMIT_CONTEXT)
    except TemplateRenderError:
        result = None
    finally:
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MAX_PEAK_BYTES, f"{peak / 2**20:.0f} MB for {source}"
    assert seconds < MAX_RENDER_SECONDS + 1.5, f"{seconds:.1f} s for {source}"
    if result is not None:
        chars, items = measure(result)
        assert chars <= MAX_TEXT_CHARS * 2
        assert items <= MAX_ITEMS
