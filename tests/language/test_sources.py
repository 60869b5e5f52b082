"""Rule and fixture files as hostile input: bounded work, files confined to their folder, located errors.

Every test here is about what a file can do to the process reading it: expand
through YAML aliases, link out of RULES_DIR, block a read, or be too big. Each
ends in a `SourceProblem` with path:line:column, quickly, never a traceback.
"""

from __future__ import annotations

import itertools
import os
import string
import time
from pathlib import Path

import pytest

from actions.registry import load_registry
from engine.errors import SourceErrors, SourceProblem
from engine.language.fixtures import load_fixtures
from engine.language.loader import load_rules
from engine.language.source_files import MAX_RULE_FILE_BYTES, find_source_files
from engine.language.sources import SourceDocument, parse_text, read_document
from engine.language.yaml_nodes import MAX_ALIAS_EXPANSION

RULE = "id: {id}\non: item.updated\nactions:\n  - type: log\n    message: hi\n"


def laughs(levels: int = 9, width: int = 9) -> str:
    """The billion-laughs shape: each level a list of `width` aliases to the level before."""
    names = string.ascii_lowercase[:levels]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['x'] * width)}]"]
    for before, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [{', '.join([f'*{before}'] * width)}]")
    return "\n".join(lines) + "\n"


def _problems(folder: Path) -> list[str]:
    with pytest.raises(SourceErrors) as raised:
        load_rules(folder, load_registry())
    return [str(problem).removeprefix(f"{folder}/") for problem in raised.value.problems]


def _parsed_quickly(text: str, *, yaml_syntax: bool = True) -> SourceDocument | SourceProblem:
    started = time.perf_counter()
    parsed = parse_text(text, "bomb.yaml", yaml_syntax=yaml_syntax)
    assert time.perf_counter() - started < 1.0
    return parsed


# --- anchors and aliases ----------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_a_billion_laughs_file_is_refused_at_once_with_the_alias_that_overflows() -> None:
    text = laughs()
    assert len(text) < 400
    problem = _parsed_quickly(text)
    assert isinstance(problem, SourceProblem)
    assert problem.message.startswith("aliases expand this file to more than")
    assert f"{MAX_ALIAS_EXPANSION:,}" in problem.message
    assert (problem.line, problem.column) != (1, 1)  # at the alias that overflows, not the file
    assert "anchors" in problem.message


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "text",
    [
        # Mappings instead of lists.
        "a: &a {k1: x, k2: x, k3: x, k4: x, k5: x, k6: x, k7: x, k8: x}\n"
        + "".join(
            f"{n}: &{n} {{" + ", ".join(f"k{i}: *{p}" for i in range(8)) + "}\n"
            for p, n in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        # Merge keys.
        "a: &a {k1: x, k2: x, k3: x, k4: x}\n"
        + "".join(
            f"{n}: &{n} {{<<: [*{p}], " + ", ".join(f"m{i}: *{p}" for i in range(8)) + "}\n"
            for p, n in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        # Inside a rule, where the loader would walk it.
        "x:\n"
        + "".join(f"  {line}\n" for line in laughs().splitlines())
        + "id: r\non: item.updated\nwhen: {and: [*i, true]}\nactions: [{type: log, message: m}]\n",
    ],
    ids=["mappings", "merge-keys", "inside-a-rule"],
)
def test_alias_expansion_in_any_shape_is_refused(text: str) -> None:
    problem = _parsed_quickly(text)
    assert isinstance(problem, SourceProblem), problem
    assert "aliases expand" in problem.message or "alias" in problem.message


@pytest.mark.timeout(10)
def test_a_recursive_alias_is_refused_with_its_location() -> None:
    problem = _parsed_quickly("ok: 1\nloop: &a [1, *a]\n")
    assert isinstance(problem, SourceProblem)
    assert "refers to itself" in problem.message
    assert problem.line == 2


def test_modest_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "- &base\n  id: a\n  on: item.updated\n  actions: &acts [{type: log, message: hi}]\n"
        "- <<: *base\n  id: b\n"
        "- {id: c, on: rent.created, actions: *acts}\n"
    )
    rules = load_rules(tmp_path, load_registry())
    assert rules.ids() == ["a", "b", "c"]


@pytest.mark.timeout(20)
def test_check_of_a_billion_laughs_folder_ends_at_once(tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text(laughs())
    (tmp_path / "ok.yaml").write_text(RULE.format(id="fine"))
    started = time.perf_counter()
    problems = _problems(tmp_path)
    assert time.perf_counter() - started < 2.0
    assert len(problems) == 1
    assert problems[0].startswith("bomb.yaml:")


# --- values YAML or JSON can write but a rule cannot hold ------------------------------------


def test_an_integer_too_long_to_read_is_located_in_yaml_and_json() -> None:
    yaml_problem = parse_text("a: 1\nb: " + "7" * 5000 + "\n", "r.yaml", yaml_syntax=True)
    assert isinstance(yaml_problem, SourceProblem)
    assert (yaml_problem.line, yaml_problem.column) == (2, 4)
    assert "digits" in yaml_problem.message
    assert "invalid JSON" not in yaml_problem.message
    json_problem = parse_text('{"a": 1,\n "b": ' + "7" * 5000 + "}", "r.json", yaml_syntax=False)
    assert isinstance(json_problem, SourceProblem)
    assert (json_problem.line, json_problem.column) == (2, 7)
    assert "digits" in json_problem.message


# --- files confined to RULES_DIR -------------------------------------------------------------


def test_a_rule_file_linking_outside_the_rules_folder_is_refused_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "outside" / ".env"
    secret.parent.mkdir()
    secret.write_text("STOCKAJ_WEBHOOK_SECRET=s3cr3t-value-of-the-process\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "env.yaml").symlink_to(secret)
    (rules / "ok.yaml").write_text(RULE.format(id="fine"))
    problems = _problems(rules)
    assert len(problems) == 1
    assert problems[0].startswith("env.yaml:1:1: ")
    assert "outside the rules folder" in problems[0]
    assert "s3cr3t" not in problems[0]


def test_a_linked_folder_outside_the_rules_folder_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (elsewhere / "passwd.yaml").write_text("root:x:0:0:root:/root:/bin/bash\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "system").symlink_to(elsewhere, target_is_directory=True)
    problems = _problems(rules)
    assert len(problems) == 1
    assert problems[0].startswith("system:1:1: ")
    assert "outside the rules folder" in problems[0]
    assert "root:x" not in problems[0]


def test_links_that_stay_inside_the_rules_folder_load_as_a_kubernetes_volume_lays_them_out(
    tmp_path: Path,
) -> None:
    # A ConfigMap volume: files link to ..data/, which links to a timestamped folder.
    rules = tmp_path / "rules"
    stamped = rules / "..2026_12_05_10_00_00.123"
    stamped.mkdir(parents=True)
    (stamped / "a.yaml").write_text(RULE.format(id="a"))
    (rules / "..data").symlink_to(stamped.name, target_is_directory=True)
    (rules / "a.yaml").symlink_to("..data/a.yaml")
    # A linked folder inside the rules folder, and a link to it again (a loop).
    (rules / "team").mkdir()
    (rules / "team" / "b.yaml").write_text(RULE.format(id="b"))
    (rules / "team" / "again").symlink_to("..", target_is_directory=True)
    assert load_rules(rules, load_registry()).ids() == ["a", "b"]


def test_a_rules_folder_that_is_itself_a_link_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "releases" / "v2"
    real.mkdir(parents=True)
    (real / "a.yaml").write_text(RULE.format(id="a"))
    (tmp_path / "current").symlink_to(real, target_is_directory=True)
    assert load_rules(tmp_path / "current", load_registry()).ids() == ["a"]


@pytest.mark.timeout(10)
def test_a_fifo_named_like_a_rule_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "ok.yaml").write_text(RULE.format(id="fine"))
    problems = _problems(tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith("pipe.yaml:1:1: ")
    assert "not a regular file" in problems[0]


def test_fixture_folders_may_link_anywhere(tmp_path: Path) -> None:
    shared = tmp_path / "shared-fixtures"
    shared.mkdir()
    (shared / "f.yaml").write_text("event: item.updated\npayload: {}\n")
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    (fixtures / "shared").symlink_to(shared, target_is_directory=True)
    (fixtures / "g.yaml").symlink_to(shared / "f.yaml")
    paths, problems = find_source_files(fixtures, confined=False)
    assert problems == []
    assert [p.relative_to(fixtures).as_posix() for p in paths] == ["g.yaml", "shared/f.yaml"]


# --- size ---------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_a_rule_file_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    rule = RULE.replace("id: {id}\n", "- id: r{n}\n").replace("\n  ", "\n    ").replace("\non", "\n  on")
    rule = rule.replace("\nactions", "\n  actions")
    with big.open("w") as out:
        n = 0
        while out.tell() <= MAX_RULE_FILE_BYTES:
            out.write(rule.replace("{n}", str(n)))
            n += 1
    started = time.perf_counter()
    problems = _problems(tmp_path)
    assert time.perf_counter() - started < 1.0
    assert len(problems) == 1
    assert problems[0].startswith("big.yaml:1:1: ")
    assert f"{MAX_RULE_FILE_BYTES:,}" in problems[0]
    assert "split it" in problems[0]


def test_fixture_files_keep_a_larger_limit(tmp_path: Path) -> None:
    fixture = tmp_path / "f.json"
    body = "x" * (MAX_RULE_FILE_BYTES + 10)
    fixture.write_text(f'{{"event": "item.updated", "payload": {{"note": "{body}"}}}}')
    files, problems = load_fixtures([tmp_path])
    assert problems == []
    assert len(files[0].fixtures[0].delivery.payload["note"]) == len(body)
    assert isinstance(read_document(fixture), SourceProblem)  # as a rule file it would be too big
