"""The rule loader: every problem of a rule pack, each located at file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from actions.registry import load_registry
from engine.errors import SourceErrors
from engine.language.loader import load_rules
from engine.language.rules import RuleSet

REPO = Path(__file__).resolve().parents[2]


def _write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def _load(folder: Path) -> RuleSet:
    return load_rules(folder, load_registry())


def _problems(folder: Path) -> list[str]:
    with pytest.raises(SourceErrors) as raised:
        _load(folder)
    return [str(problem).removeprefix(f"{folder}/") for problem in raised.value.problems]


def test_shipped_examples_load() -> None:
    rules = _load(REPO / "rules")
    assert set(rules.ids()) >= {"rental-to-slack", "reorder-low-stock", "inventory-sync"}


def test_one_rule_or_a_list_per_file_json_and_yaml_recursively(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "a.json": '{"id": "a", "on": "rent.created", "actions": [{"type": "log", "message": "a"}]}',
            "nested/deeper/b.yml": "- id: b\n  on: '*'\n  actions: [{type: log, message: b}]\n"
            "- id: c\n  on: [item.updated, rent.*]\n  actions: [{type: log, message: c}]\n",
            ".hidden/x.yaml": "not: a rule",
            "notes.txt": "ignored",
        },
    )
    rules = _load(tmp_path)
    assert rules.ids() == ["a", "b", "c"]
    assert [r.id for r in rules.for_event("rent.created")] == ["a", "b", "c"]
    assert [r.id for r in rules.for_event("item.updated")] == ["b", "c"]
    assert [r.id for r in rules.for_event("item.low_stock")] == ["b"]


def test_yaml_on_key_and_yes_stay_text(tmp_path: Path) -> None:
    _write(tmp_path, {"r.yaml": "id: r\non: item.updated\nactions:\n  - type: log\n    message: yes\n"})
    rule = _load(tmp_path).rules[0]
    assert rule.events == ("item.updated",)


def test_every_problem_is_reported_with_file_line_and_column(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "broken.json": '{"id": "x",\n  "on": }',
            "broken.yaml": "id: y\non: [item.updated\n",
            "stock.yaml": """\
- id: reorder
  on: item.low_stock
  whne: {}
  when:
    and:
      - "<=": [{var: data.quantity}, 5]
      - {vr: data.x}
  actions:
    - type: slak
      text: hi
    - type: purchase_order
      item_sku: "{{ data.external_id }}"
      quantity: 0
      notse: x
    - type: log
      message: "{{ data.name "
  throttle: {key: "{{ data.id }}", per: 5x}
- id: empty-actions
  on: "rent.*x"
  actions: []
""",
        },
    )
    assert _problems(tmp_path) == [
        "broken.json:2:9: invalid JSON: Expecting value",
        "broken.yaml:3:1: invalid YAML: did not find expected ',' or ']'",
        "stock.yaml:3:3: reorder: unknown key 'whne' (did you mean 'when'?)",
        "stock.yaml:7:9: reorder: expected a JsonLogic operator, found 'vr'; did you mean 'var'?",
        "stock.yaml:9:13: reorder: unknown action type 'slak' (did you mean 'slack'?)",
        "stock.yaml:13:17: reorder: expected greater than 0, found the number 0",
        "stock.yaml:14:7: reorder: unknown param 'notse' (did you mean 'notes'?)",
        "stock.yaml:16:16: reorder: template syntax error: unexpected end of template, "
        "expected 'end of print statement'.",
        "stock.yaml:17:41: reorder: expected a duration such as '30m', '6h' or '1d', or calendar day, found the text \"5x\"",
        "stock.yaml:19:7: empty-actions: expected an event name such as 'rent.created', "
        "a prefix such as 'rent.*', or '*', found the text \"rent.*x\"",
        "stock.yaml:20:12: empty-actions: expected at least 1 item, found a list of 0 items",
    ]


def test_duplicate_ids_across_files_point_at_the_first_definition(tmp_path: Path) -> None:
    rule = "id: same\non: '*'\nactions: [{type: log, message: x}]\n"
    _write(tmp_path, {"a.yaml": rule, "b/c.yaml": "\n" + rule})
    assert _problems(tmp_path) == [
        f"b/c.yaml:2:5: same: duplicate rule id: also defined at {tmp_path}/a.yaml:1; "
        "give each rule its own id"
    ]


def test_missing_required_keys_and_params_are_named(tmp_path: Path) -> None:
    _write(tmp_path, {"r.yaml": "id: r\nactions:\n  - type: slack\n    blocks: []\n"})
    assert _problems(tmp_path) == [
        "r.yaml:1:1: r: missing required key 'on'",
        "r.yaml:3:5: r: missing required param 'text' for action type 'slack'",
    ]


def test_a_url_whose_host_comes_from_the_payload_is_refused(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "r.yaml": """\
id: r
on: '*'
actions:
  - {type: http, url: "{{ data.callback }}"}
  - {type: http, url: "https://{{ data.host }}/x"}
  - {type: http, url: "https://crm.example.com/items/{{ data.id }}"}
  - {type: slack, text: hi, webhook_url: "{{ secrets.SLACK_URL }}"}
"""
        },
    )
    problems = _problems(tmp_path)
    assert [p.split(": ", 2)[0] for p in problems] == ["r.yaml:4:23", "r.yaml:5:23"]
    assert all("host written in the rule" in p for p in problems)


def test_a_templated_table_name_is_refused(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {"r.yaml": "id: r\non: '*'\nactions:\n  - {type: sql_upsert, table: '{{ data.t }}', key: {id: 1}}\n"},
    )
    assert _problems(tmp_path) == [
        "r.yaml:4:31: r: expected 'table' written out in the rule, found a template; "
        "it may not depend on the delivery"
    ]


def test_a_file_that_is_not_a_rule_or_list_of_rules(tmp_path: Path) -> None:
    _write(tmp_path, {"r.json": '[1, "x"]', "s.yaml": "just text"})
    assert _problems(tmp_path) == [
        "r.json:1:2: expected a rule (an object with id, on and actions), found the number 1",
        'r.json:1:5: expected a rule (an object with id, on and actions), found the text "x"',
        's.yaml:1:1: expected a rule (an object with id, on and actions), found the text "just text"',
    ]


def test_a_condition_nested_1000_levels_deep_is_refused_not_crashed(tmp_path: Path) -> None:
    deep = '{"!": ' * 1000 + "true" + "}" * 1000
    _write(tmp_path, {"deep.json": f'{{"id": "d", "on": "*", "when": {deep}, "actions": []}}'})
    problems = _problems(tmp_path)
    assert len(problems) == 1
    assert "nesting" in problems[0] or "nested too deeply" in problems[0]


def test_non_utf8_and_unreadable_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes("id: caf\xe9\n".encode("latin-1"))
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "folder.yaml" / "inner.txt").write_text("x")
    problems = _problems(tmp_path)
    assert problems == ["latin1.yaml:1:8: expected UTF-8 text, found the byte 0xe9; save the file as UTF-8"]


def test_missing_rules_folder_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SourceErrors, match="rules folder not found; create it or set RULES_DIR"):
        _load(tmp_path / "nope")


def test_disabled_rule_loads_and_stays_disabled(tmp_path: Path) -> None:
    _write(tmp_path, {"r.yaml": "id: r\non: '*'\nenabled: false\nactions: [{type: log, message: x}]\n"})
    assert _load(tmp_path).rules[0].enabled is False


@pytest.mark.parametrize("written", ["no", "off", "0", "1", "yes", '"false"', "'true'", "False"])
def test_enabled_takes_only_true_or_false(tmp_path: Path, written: str) -> None:
    _write(
        tmp_path, {"r.yaml": f"id: r\non: '*'\nenabled: {written}\nactions: [{{type: log, message: x}}]\n"}
    )
    if written == "False":  # YAML's own spelling of false
        assert _load(tmp_path).rules[0].enabled is False
        return
    (problem,) = _problems(tmp_path)
    assert problem.startswith("r.yaml:3:10: r: expected true or false"), problem
    assert "write enabled: false to switch the rule off" in problem


def test_enabled_in_json_takes_only_true_or_false(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {"r.json": '{"id": "r", "on": "*", "enabled": 0, "actions": [{"type": "log", "message": "x"}]}'},
    )
    (problem,) = _problems(tmp_path)
    assert problem.startswith("r.json:1:35: r: expected true or false"), problem


def test_a_transformed_secret_is_refused_where_it_is_written(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "r.yaml": """\
id: r
on: '*'
actions:
  - type: http
    url: "https://crm.example.com/?t={{ secrets.CRM_TOKEN | urlencode }}"
    headers: {Authorization: "Bearer {{ secrets.CRM_TOKEN }}"}
"""
        },
    )
    (problem,) = _problems(tmp_path)
    assert problem.startswith("r.yaml:5:10: r: ")
    assert "secrets.CRM_TOKEN" in problem
    assert "urlencode" in problem
