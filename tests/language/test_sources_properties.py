"""Property-based tests of rule sources: whatever a file holds, rules or located errors, quickly.

Random text, random bytes, YAML-ish and JSON-ish text, nested anchors and
aliases, and deep nesting go through `parse_text`, `read_document` and the
whole loader (`load_rules`). The outcome is always a parsed document (or rule
set) or `SourceProblem`s with path:line:column; never another exception, and
within bounded time and memory. Example counts: `pytest --hypothesis-show-statistics`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actions.registry import ActionRegistry, load_registry
from engine.errors import SourceErrors, SourceProblem
from engine.language.loader import load_rules
from engine.language.rules import RuleSet
from engine.language.sources import SourceDocument, _Loader, parse_text, read_document
from tests.examples import examples

SECONDS_PER_EXAMPLE = 5.0  # generous for a shared machine; an unbounded expansion never ends
PEAK_BYTES = 64 * 1024 * 1024
RULES = settings(
    max_examples=examples(300, 1000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FEWER = settings(
    max_examples=examples(150, 500),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

YAMLISH = st.text(
    alphabet=st.sampled_from([*"-:{}[],&*!|>'\"#%@`? \n\t.0123456789abcxyzonidtwhe_~<=", "\u00e9", "\u2028"]),
    max_size=300,
)
JSONISH = st.text(alphabet=st.sampled_from(list('{}[],:"\\ \n0123456789.-+eEtruefalsnNIfiy')), max_size=300)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=40,
)
RULE_LIKE = st.fixed_dictionaries(
    {"id": st.text(max_size=12), "on": st.sampled_from(["item.updated", "*", "rent.*", "", "a*b"])},
    optional={
        "when": VALUES,
        "actions": st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["log", "slack", "http", "slak", ""])},
                optional={"message": st.text(max_size=30), "text": VALUES, "url": st.text(max_size=30)},
            ),
            max_size=3,
        ),
        "throttle": VALUES,
        "enabled": VALUES,
    },
)


@pytest.fixture(scope="module")
def registry() -> ActionRegistry:
    return load_registry()


def _located(problem: SourceProblem, text: str | None = None) -> None:
    assert problem.line >= 1
    assert problem.column >= 1
    if text is not None:
        assert problem.line <= len(text.splitlines()) + 2, problem  # YAML breaks lines at U+2028 too
    assert problem.message


def _parsed(text: str, *, yaml_syntax: bool) -> SourceDocument | SourceProblem:
    started = time.perf_counter()
    result = parse_text(text, "r.yaml" if yaml_syntax else "r.json", yaml_syntax=yaml_syntax)
    assert time.perf_counter() - started < SECONDS_PER_EXAMPLE
    if isinstance(result, SourceProblem):
        _located(result, text)
    else:
        assert isinstance(result, SourceDocument)
        result.position(("actions", 0, "type"))  # the position map builds, whatever the shape
    return result


@pytest.fixture
def folder() -> Iterator[Path]:
    # One folder for all the examples of a test: each example empties it first (see _loaded).
    path = Path(tempfile.mkdtemp(prefix="rules-prop-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _loaded(folder: Path, files: dict[str, bytes], registry: ActionRegistry) -> RuleSet | list[SourceProblem]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    started = time.perf_counter()
    try:
        loaded: RuleSet | list[SourceProblem] = load_rules(folder, registry)
    except SourceErrors as exc:
        loaded = exc.problems
    assert time.perf_counter() - started < SECONDS_PER_EXAMPLE
    if isinstance(loaded, list):
        assert loaded
        for problem in loaded:
            assert problem.path.startswith(str(folder)), problem
            _located(problem)
    return loaded


@RULES
@given(text=st.text(max_size=400), yaml_syntax=st.booleans())
def test_any_text_parses_or_is_a_located_problem(text: str, yaml_syntax: bool) -> None:
    _parsed(text, yaml_syntax=yaml_syntax)


@RULES
@given(text=YAMLISH)
def test_yaml_like_text_parses_or_is_a_located_problem(text: str) -> None:
    _parsed(text, yaml_syntax=True)


@RULES
@given(text=JSONISH)
def test_json_like_text_parses_or_is_a_located_problem(text: str) -> None:
    _parsed(text, yaml_syntax=False)


@FEWER
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".yaml", ".json", ".yml"]))
def test_any_bytes_in_a_file_are_read_or_a_located_problem(folder: Path, data: bytes, suffix: str) -> None:
    path = folder / f"r{suffix}"
    path.write_bytes(data)
    result = read_document(path)
    if isinstance(result, SourceProblem):
        _located(result)


def _alias_text(draw: st.DrawFn) -> str:
    """Anchored flow collections, each made of aliases to earlier anchors and scalars."""
    lines = ["s0: &s0 x"]
    anchors = ["s0"]
    for level in range(draw(st.integers(1, 12))):
        width = draw(st.integers(1, 12))
        parts = [
            f"*{draw(st.sampled_from(anchors))}"
            if draw(st.booleans())
            else draw(st.sampled_from(["1", "y", "{}"]))
            for _ in range(width)
        ]
        name = f"a{level}"
        if draw(st.booleans()):
            body = "[" + ", ".join(parts) + "]"
        else:
            merge = f"<<: *{anchors[-1]}, " if draw(st.booleans()) and anchors[-1] != "s0" else ""
            body = "{" + merge + ", ".join(f"k{i}: {part}" for i, part in enumerate(parts)) + "}"
        if draw(st.booleans()):  # an alias to the anchor being defined: a loop
            body = body.replace("[", f"[*{name}, ", 1) if body.startswith("[") else body
        lines.append(f"{name}: &{name} {body}")
        anchors.append(name)
    lines.append(
        f"rule: {{id: r, on: item.updated, when: {{and: [*{draw(st.sampled_from(anchors))}]}}, "
        "actions: [{type: log, message: m}]}"
    )
    return "\n".join(lines) + "\n"


@FEWER
@given(data=st.data())
def test_anchors_and_aliases_never_expand_without_bound(data: st.DataObject) -> None:
    text = data.draw(st.composite(_alias_text)())
    tracemalloc.start()
    try:
        result = _parsed(text, yaml_syntax=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"{peak:,} bytes for {len(text)} bytes of text"
    if isinstance(result, SourceDocument):
        assert len(json.dumps(result.value)) < 20 * 1024 * 1024


@FEWER
@given(
    depth=st.integers(1, 5000),
    opener=st.sampled_from(["[", "{a: ", '{"a": ', "- ", "!!seq [", "&x ["]),
    yaml_syntax=st.booleans(),
)
def test_deep_nesting_is_refused_or_parsed_never_a_crash(depth: int, opener: str, yaml_syntax: bool) -> None:
    closer = {"[": "]", "{a: ": "}", '{"a": ': "}", "- ": "", "!!seq [": "]", "&x [": "]"}[opener]
    _parsed(opener * depth + "1" + closer * depth, yaml_syntax=yaml_syntax)


@FEWER
@given(rules=st.lists(RULE_LIKE, min_size=1, max_size=4), as_json=st.booleans())
def test_rule_shaped_files_load_or_every_problem_is_located(
    folder: Path, registry: ActionRegistry, rules: list[dict[str, Any]], as_json: bool
) -> None:
    if as_json:
        text = json.dumps(rules, allow_nan=True)
        files = {"rules.json": text.encode()}
    else:
        text = yaml.safe_dump(rules, allow_unicode=True)
        files = {"rules.yaml": text.encode()}
    _loaded(folder, files, registry)


@FEWER
@given(
    texts=st.lists(st.one_of(YAMLISH, JSONISH, st.text(max_size=200)), min_size=1, max_size=4),
    data=st.data(),
)
def test_a_folder_of_random_files_loads_or_every_problem_is_located(
    folder: Path, registry: ActionRegistry, texts: list[str], data: st.DataObject
) -> None:
    suffixes = data.draw(
        st.lists(st.sampled_from([".yaml", ".json", ".yml"]), min_size=len(texts), max_size=len(texts))
    )
    files = {
        f"f{i}{suffix}": text.encode() for i, (text, suffix) in enumerate(zip(texts, suffixes, strict=True))
    }
    _loaded(folder, files, registry)


def _pyyaml_value(text: str) -> Any:
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


@RULES
@given(text=st.one_of(YAMLISH, VALUES.map(lambda value: yaml.safe_dump(value, allow_unicode=True))))
def test_yaml_values_are_the_ones_pyyaml_builds(text: str) -> None:
    parsed = parse_text(text, "r.yaml", yaml_syntax=True)
    if isinstance(parsed, SourceDocument):
        assert parsed.value == _pyyaml_value(text)
