"""Every example in docs/rules.md, run through the real engine.

The guide's source opens with an HTML comment that defines the convention this
module implements: the info string of each fenced block says what the block is
(`yaml rule`, `yaml fixture`, `yaml rule-error` + `text`, `yaml logic`,
`console`, `json vscode-settings`), and `<!-- table: NAME -->` marks a table
that must match the code. A block with any other info string fails
`test_every_block_in_the_guide_is_a_tested_kind`, so no example goes untested.

Blocks share a sandbox (a temporary folder with `rules/` and `fixtures/`) with
the blocks before them under the same heading of level 2 or 3.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import pytest
from click.testing import CliRunner

from actions.registry import load_registry
from engine.cli.main import cli
from engine.config import Settings
from engine.errors import SourceErrors, SourceProblem
from engine.language import conditions
from engine.language.delivery import Delivery
from engine.language.expressions import CompiledExpression, compile_expression
from engine.language.fixtures import Because, Expectations, ExpectedAction, FixtureSpec, load_fixtures
from engine.language.harness import replay
from engine.language.loader import load_rules
from engine.language.matching import Matcher
from engine.language.params import rule_params
from engine.language.rules import RuleSpec, parse_duration
from engine.language.sources import SourceDocument, parse_text
from engine.language.templates.budget import (
    MAX_CALL_DEPTH,
    MAX_EXPONENT,
    MAX_ITEMS,
    MAX_NUMBER_DIGITS,
    MAX_RANGE_ITEMS,
    MAX_RENDER_SECONDS,
    MAX_STEPS,
    MAX_TEXT_CHARS,
)
from engine.language.throttle import InMemoryThrottleState
from engine.secrets import Secrets

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "rules.md"

KINDS = {
    ("yaml", "rule"),
    ("json", "rule"),
    ("yaml", "fixture"),
    ("json", "fixture"),
    ("yaml", "rule-error"),
    ("json", "rule-error"),
    ("text", ""),  # only right after a rule-error block: its expected problems
    ("yaml", "logic"),
    ("console", ""),
    ("json", "vscode-settings"),
}
LOGIC_KEYS = {"when", "jsonlogic", "data", "event", "result", "fires", "missing", "error"}
LOGIC_TIMESTAMP = "2026-03-01T09:00:00Z"

_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<info>.*)$")
_HEADING = re.compile(r"^(?P<level>#{1,6})\s+(?P<title>.+?)\s*$")
_TABLE_MARK = re.compile(r"^<!--\s*table:\s*(?P<name>[\w:-]+)\s*-->$")
_ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


# ---------------------------------------------------------------- the guide


@dataclass(frozen=True)
class Block:
    """One fenced block of the guide."""

    line: int  # of the opening fence, 1-based
    lang: str
    kind: str
    attrs: dict[str, str]
    text: str
    sandbox: int  # blocks with the same number share a sandbox
    heading: str

    @property
    def id(self) -> str:
        """`section:file` for a test's name, or `section:L<line>` for a block without a file."""
        section = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"{section}:{self.attrs.get('file') or f'L{self.line}'}"

    @property
    def file(self) -> str:
        if "file" in self.attrs:
            return self.attrs["file"]
        folder = "fixtures" if self.kind == "fixture" else "rules"
        stem = "broken" if self.kind == "rule-error" else f"example-L{self.line}"
        return f"{folder}/{stem}.{self.lang}"

    @property
    def writes_file(self) -> bool:
        return self.kind in ("rule", "rule-error", "fixture")


@dataclass(frozen=True)
class Table:
    """A table marked `<!-- table: NAME -->`: its rows as lists of cells."""

    name: str
    line: int
    rows: list[list[str]]

    def column(self, index: int) -> dict[str, str]:
        """Each row's name (the code in its first cell) and the text of another cell."""
        return {_code(row[0]): row[index].strip().lower() for row in self.rows}


@dataclass
class Guide:
    blocks: list[Block] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    text: str = ""

    def of_kind(self, *kinds: str) -> list[Block]:
        return [b for b in self.blocks if b.kind in kinds and b.lang != "text"]

    def before(self, block: Block, kinds: Iterable[str]) -> list[Block]:
        """Blocks of these kinds above `block` in its sandbox."""
        wanted = set(kinds)
        return [
            b
            for b in self.blocks
            if b.sandbox == block.sandbox and b.line < block.line and b.kind in wanted and b.lang != "text"
        ]

    def following(self, block: Block) -> Block | None:
        later = [b for b in self.blocks if b.line > block.line]
        return later[0] if later else None

    def table(self, name: str) -> Table:
        found = [t for t in self.tables if t.name == name]
        assert len(found) == 1, f"the guide should have exactly one table marked '{name}'"
        return found[0]


def parse_guide(text: str) -> Guide:
    guide = Guide(text=text)
    lines = text.splitlines()
    sandbox, heading, index = 0, "", 0
    while index < len(lines):
        line = lines[index]
        fence = _FENCE.match(line)
        if fence:
            marker = fence["fence"]
            end = index + 1
            while end < len(lines) and lines[end].strip() != marker:
                end += 1
            words = fence["info"].split()
            lang = words[0] if words else ""
            kind = words[1] if len(words) > 1 and "=" not in words[1] else ""
            attrs = dict(w.partition("=")[::2] for w in words[1 + bool(kind) :])
            body = "\n".join(lines[index + 1 : end]) + "\n"
            guide.blocks.append(Block(index + 1, lang, kind, attrs, body, sandbox, heading))
            index = end + 1
            continue
        title = _HEADING.match(line)
        if title and len(title["level"]) <= 3:
            sandbox += 1
            heading = title["title"]
        mark = _TABLE_MARK.match(line.strip())
        if mark:
            rows = []
            row_index = index + 1
            while row_index < len(lines) and not lines[row_index].startswith("|"):
                row_index += 1
            table_lines = []
            while row_index < len(lines) and lines[row_index].startswith("|"):
                table_lines.append(lines[row_index])
                row_index += 1
            for row in table_lines[2:]:  # after the header and the |---| line
                rows.append([cell.strip() for cell in row.strip().strip("|").split("|")])
            guide.tables.append(Table(mark["name"], index + 1, rows))
        index += 1
    return guide


def _code(cell: str) -> str:
    spans: list[str] = re.findall(r"`([^`]+)`", cell)
    assert spans, f"expected a `code` name in the first cell, found {cell!r}"
    return spans[0]


GUIDE_DOC = parse_guide(GUIDE.read_text(encoding="utf-8"))


def _params(blocks: list[Block]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("block", blocks, ids=[b.id for b in blocks])


# ---------------------------------------------------------------- helpers


def _write(root: Path, blocks: Iterable[Block]) -> None:
    (root / "rules").mkdir(exist_ok=True)
    (root / "fixtures").mkdir(exist_ok=True)
    for block in blocks:
        path = root / block.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.text, encoding="utf-8")


def _document(block: Block) -> SourceDocument:
    document = parse_text(block.text, block.file, yaml_syntax=block.lang == "yaml")
    assert isinstance(document, SourceDocument), f"{block.id} does not parse: {document}"
    return document


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _json(value: Any) -> str:
    """Equal only when equal as JSON: 7 is not 7.0, true is not 1."""
    return json.dumps(value, sort_keys=True)


def _clean_environment() -> dict[str, str | None]:
    """Unset every variable the engine reads, so only the example's own settings apply."""
    names = {name.upper() for name in Settings.model_fields}
    return {name: None for name in os.environ if name.startswith("SECRET_") or name in names}


def _matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line; an expected line that is just `...` stands for any number of lines."""
    pattern = "".join(
        r"(?:[^\n]*\n)*?" if line.strip() == "..." else re.escape(line) + r"\n" for line in expected
    )
    return re.fullmatch(pattern, "".join(f"{line}\n" for line in actual)) is not None


# ---------------------------------------------------------------- the convention itself


def test_the_guide_source_opens_with_its_testing_convention() -> None:
    head = GUIDE_DOC.text.lstrip()
    assert head.startswith("<!--")
    convention = head[: head.index("-->")]
    assert "--" not in convention[4:], "a -- inside the comment would end or break it"
    for kind in ("yaml rule", "yaml fixture", "yaml rule-error", "yaml logic", "console", "table:"):
        assert kind in convention, f"the convention comment does not explain '{kind}'"


def test_every_block_in_the_guide_is_a_tested_kind() -> None:
    untested = [
        f"line {b.line}: ```{b.lang} {b.kind}" for b in GUIDE_DOC.blocks if (b.lang, b.kind) not in KINDS
    ]
    assert untested == []


def test_every_rule_error_is_followed_by_its_expected_text_and_every_text_follows_one() -> None:
    for block in GUIDE_DOC.blocks:
        if block.kind == "rule-error":
            after = GUIDE_DOC.following(block)
            assert after is not None, f"line {block.line}: nothing after this rule-error"
            assert after.lang == "text", f"line {block.line}: no ```text right after it"
        if block.lang == "text":
            before = [b for b in GUIDE_DOC.blocks if b.line < block.line]
            assert before, f"line {block.line}: text without rule-error"
            assert before[-1].kind == "rule-error", f"line {block.line}: text without rule-error"


def test_files_are_named_once_per_sandbox_with_their_language() -> None:
    seen: dict[tuple[int, str], int] = {}
    for block in GUIDE_DOC.blocks:
        if not block.writes_file:
            continue
        assert block.file.endswith((".yaml", ".yml") if block.lang == "yaml" else ".json"), block.id
        assert block.file.startswith("fixtures/" if block.kind == "fixture" else "rules/"), block.id
        key = (block.sandbox, block.file)
        assert key not in seen, f"line {block.line}: {block.file} is already written at line {seen[key]}"
        seen[key] = block.line


def test_the_guide_has_examples_of_every_kind() -> None:
    kinds = {(b.lang, b.kind) for b in GUIDE_DOC.blocks}
    assert kinds >= KINDS - {("json", "fixture"), ("json", "rule-error")}


# ---------------------------------------------------------------- rules, fixtures, errors


@_params(GUIDE_DOC.of_kind("rule"))
def test_rule_block_loads(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, [*GUIDE_DOC.before(block, ["rule"]), block])
    monkeypatch.chdir(tmp_path)

    rules = load_rules(Path("rules"), load_registry())

    ids = [item["id"] for item in _items(_document(block).value)]
    assert set(ids) <= set(rules.ids())
    for schema in re.findall(r"\$schema=(\S+)", block.text):
        assert (REPO / Path(block.file).parent / schema).resolve().is_file(), f"{schema} is not in the repo"


@_params(GUIDE_DOC.of_kind("fixture"))
async def test_fixture_block_gives_the_documented_verdict(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule_blocks = GUIDE_DOC.before(block, ["rule"])
    assert rule_blocks, f"line {block.line}: no rule block above this fixture under '{block.heading}'"
    _write(tmp_path, [*rule_blocks, block])
    monkeypatch.chdir(tmp_path)
    rules = load_rules(Path("rules"), load_registry())

    files, problems = load_fixtures([Path(block.file)])
    results = await replay(rules, files, {})

    assert problems == []
    assert results, f"{block.id} holds no fixture"
    assert all(r.fixture.expect is not None for r in results), "every documented fixture says what it expects"
    if "fails" in block.attrs:
        assert [r.fixture.name for r in results if r.passed] == []
    else:
        failures = {r.fixture.name: [f.message for f in r.failures] for r in results if not r.passed}
        assert failures == {}


@_params(GUIDE_DOC.of_kind("rule-error"))
def test_rule_error_block_gives_exactly_the_documented_problems(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, [block])
    monkeypatch.chdir(tmp_path)
    expected = GUIDE_DOC.following(block)
    assert expected is not None

    with pytest.raises(SourceErrors) as raised:
        load_rules(Path("rules"), load_registry())

    assert [str(problem) for problem in raised.value.problems] == expected.text.strip().splitlines()
    assert all(isinstance(p, SourceProblem) and p.path == block.file for p in raised.value.problems)


# ---------------------------------------------------------------- JsonLogic cheat-sheet

LOGIC_EXAMPLES = [
    (block, index, example)
    for block in GUIDE_DOC.of_kind("logic")
    for index, example in enumerate(_items(_document(block).value))
]


@pytest.mark.parametrize(
    ("block", "index", "example"),
    LOGIC_EXAMPLES,
    ids=[f"{block.id}-{index}" for block, index, _ in LOGIC_EXAMPLES],
)
def test_logic_example_evaluates_as_documented(block: Block, index: int, example: Any) -> None:
    assert isinstance(example, dict), f"line {block.line} #{index}: expected an object"
    assert "when" in example, f"line {block.line} #{index}: needs when"
    assert set(example) <= LOGIC_KEYS, f"unknown keys {set(example) - LOGIC_KEYS}"
    assert {"result", "fires", "missing", "error"} & set(example), "say what it gives"
    when, expression = example["when"], None
    if isinstance(when, str):  # an expression: what it compiles to is what runs
        expression = compile_expression(when)
        assert isinstance(expression, CompiledExpression), f"line {block.line} #{index}: {expression}"
        when = expression.logic
    if "jsonlogic" in example:
        assert expression is not None, "jsonlogic says what an expression compiles to"
        assert when == example["jsonlogic"], f"line {block.line} #{index}: compiles to {json.dumps(when)}"
    event = example.get("event", "item.low_stock")
    payload = {"event": event, "timestamp": LOGIC_TIMESTAMP, "data": example.get("data", {})}
    context = Delivery(event, "doc-example", payload).context()
    assert conditions.check(when) == [], "a documented condition must load"

    condition = conditions.Condition(when, expression)
    verdict = condition.test(conditions.DeliveryData(context), conditions.new_session())

    if "result" in example:
        assert _json(conditions.evaluate(when, context)) == _json(example["result"])
    assert (verdict.error is not None) is example.get("error", False), verdict.error
    if "fires" in example or "missing" in example:
        assert (verdict.fired, verdict.missing_field) == (example.get("fires", False), example.get("missing"))
    else:  # undocumented means: in a rule it behaves exactly like plain JsonLogic
        assert verdict == conditions.Verdict(conditions.truthy(example["result"]))


# ---------------------------------------------------------------- command-line sessions


@dataclass(frozen=True)
class Session:
    env: dict[str, str]
    args: list[str]
    output: list[str]


def _session(block: Block) -> Session:
    lines = block.text.rstrip("\n").splitlines()
    assert lines, f"line {block.line}: an empty console block"
    assert lines[0].startswith("$ "), f"line {block.line}: a console block starts with '$ '"
    assert not any(line.startswith("$ ") for line in lines[1:]), "one command per console block"
    words = shlex.split(lines[0][2:])
    env = {}
    while words and _ENV_ASSIGNMENT.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[:1] == ["stockaj-rules"], f"line {block.line}: only stockaj-rules commands are run"
    return Session(env, words[1:], lines[1:])


@_params([b for b in GUIDE_DOC.blocks if b.lang == "console"])
def test_console_block_prints_the_documented_output(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = _session(block)
    _write(tmp_path, GUIDE_DOC.before(block, ["rule", "rule-error", "fixture"]))
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(
        cli, session.args, env={**_clean_environment(), **session.env}, catch_exceptions=False
    )

    actual = [line.rstrip() for line in result.output.rstrip("\n").splitlines()]
    assert _matches(session.output, actual), "\n".join(["documented:", *session.output, "actual:", *actual])
    assert result.exit_code == int(block.attrs.get("exit", "0"))
    if "--junit" in session.args:
        report = ET.parse(tmp_path / session.args[session.args.index("--junit") + 1]).getroot()
        assert report.tag == "testsuite"
        assert int(report.get("tests", "0")) > 0


# ---------------------------------------------------------------- editor set-up


@_params(GUIDE_DOC.of_kind("vscode-settings"))
def test_editor_settings_point_at_the_shipped_schema(block: Block) -> None:
    settings = json.loads(block.text)
    paths = [*settings.get("yaml.schemas", {})] + [entry["url"] for entry in settings.get("json.schemas", [])]

    assert paths
    for path in paths:
        schema = json.loads((REPO / path).read_text(encoding="utf-8"))
        assert schema["title"] == "Stockaj rule file"


# ---------------------------------------------------------------- tables that mirror the code


def _required(model_fields: dict[str, Any]) -> dict[str, str]:
    return {name: "yes" if info.is_required() else "no" for name, info in model_fields.items()}


def test_rule_key_table_lists_exactly_the_rule_keys() -> None:
    table = GUIDE_DOC.table("rule")
    assert table.column(1) == _required(RuleSpec.model_fields)


@pytest.mark.parametrize("action_type", load_registry().names())
def test_every_action_has_a_params_table_matching_its_params_model(action_type: str) -> None:
    plugin = load_registry().get(action_type)
    assert plugin is not None
    table = GUIDE_DOC.table(f"params:{action_type}")
    assert table.column(1) == _required(rule_params(plugin.Params))


@pytest.mark.parametrize(
    ("name", "model"),
    [("fixture", FixtureSpec), ("expect", Expectations), ("expected-action", ExpectedAction)],
)
def test_fixture_tables_list_exactly_the_fixture_keys(name: str, model: Any) -> None:
    assert GUIDE_DOC.table(name).column(1) == _required(model.model_fields)


def test_because_table_lists_exactly_the_reasons_a_fixture_can_pin() -> None:
    assert set(GUIDE_DOC.table("because").column(1)) == set(get_args(Because))


async def test_context_table_lists_what_conditions_and_templates_see(tmp_path: Path) -> None:
    table = GUIDE_DOC.table("context")
    (tmp_path / "probe.yaml").write_text(
        "id: probe\non: '*'\nactions:\n  - type: log\n    message: '{{ not_a_name }}'\n", encoding="utf-8"
    )
    rules = load_rules(tmp_path, load_registry())
    delivery = Delivery("item.updated", "d-1", {"timestamp": LOGIC_TIMESTAMP, "data": {}})
    (outcome,) = await Matcher(rules, InMemoryThrottleState(), Secrets({})).match(delivery)
    error = outcome.actions[0].error or ""
    assert "templates see: " in error, f"the probe should list what templates see, not: {error}"
    templates_see = error.rsplit("templates see: ", 1)[1].split(", ")

    assert table.column(1) == {name: "yes" if name in delivery.context() else "no" for name in templates_see}
    assert set(table.column(2).values()) == {"yes"}


def test_duration_table_examples_mean_what_they_say() -> None:
    table = GUIDE_DOC.table("durations")
    for row in table.rows:
        amount, unit = row[1].split()
        assert parse_duration(_code(row[0])) == timedelta(**{unit.rstrip("s") + "s": int(amount)})
    assert {_code(row[0])[-1] for row in table.rows} == {"s", "m", "h", "d"}


def test_template_limits_table_states_the_engine_limits() -> None:
    numbers = {row[1].replace("`", "") for row in GUIDE_DOC.table("template-limits").rows}
    assert numbers == {
        f"{MAX_TEXT_CHARS:,}",
        f"{MAX_ITEMS:,}",
        f"{MAX_RANGE_ITEMS:,}",
        f"{MAX_STEPS:,}",
        str(MAX_CALL_DEPTH),
        f"{MAX_RENDER_SECONDS:g}",
        str(MAX_EXPONENT),
        f"{MAX_NUMBER_DIGITS:,}",
    }
