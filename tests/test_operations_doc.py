"""docs/operations.md checked against the engine, so the operator's guide cannot drift.

What the guide names must exist, and what exists must be in the guide: the
settings engine.config reads (names, defaults, example values the engine
accepts), the metrics of engine.pipeline.metrics (names, types, labels), the alert rules
(a Prometheus rule file whose metrics, labels and values are real), every
`stockaj-rules ...` command it shows (parsed by the real command line), the
receiver routes it fetches, the Compose services and image paths it uses, and
the variables of .env.example.
"""

from __future__ import annotations

import itertools
import re
import shlex
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import click
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from engine.cli.main import cli
from engine.config import SECRET_PREFIX, Settings, load_settings, secret_variables
from engine.language.matching import RuleStatus
from engine.pipeline.metrics import Metrics
from engine.pipeline.receiver import ReceiverParts, create_app
from engine.plugins import KINDS, installed_plugins
from engine.store.tables import ActionStatus, DeliveryStatus

REPO = Path(__file__).resolve().parent.parent
GUIDE = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"

SETTINGS = {name.upper(): field for name, field in Settings.model_fields.items()}
BUILT_IN_ACTIONS = [p for p in installed_plugins() if p.distribution.partition(" ")[0] == "stockaj-rules"]
ACTION_SETTINGS = {setting.variable for plugin in BUILT_IN_ACTIONS for setting in plugin.settings}
SECRET_ROW = f"{SECRET_PREFIX}<NAME>"
PROGRAM = re.compile(r"(^|/)stockaj-rules(:[\w.-]+)?$")  # the CLI, or the image with its entrypoint
SHELL_OPERATORS = re.compile(r"^[;&|<>()]+$")
FENCE = re.compile(r"^( *)```([^\n`]*)\n(.*?)^\1```[ \t]*$", re.MULTILINE | re.DOTALL)
FINISHED = {DeliveryStatus.DONE.value, DeliveryStatus.FAILED.value, DeliveryStatus.NO_MATCH.value}


def _blocks(*languages: str) -> list[str]:
    """The bodies of the guide's fenced code blocks in these languages, dedented."""
    found = []
    for match in FENCE.finditer(GUIDE):
        language = match.group(2).split()[0] if match.group(2).split() else ""
        if language in languages:
            found.append(textwrap.dedent(match.group(3)))
    return found


def _table(name: str) -> list[list[str]]:
    """The cells of the rows of the table after `<!-- table: name -->` (header and rule left out)."""
    after = GUIDE.split(f"<!-- table: {name} -->\n", 1)[1]
    lines = list(itertools.takewhile(lambda line: line.startswith("|"), after.splitlines()))
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _alert_rules() -> dict[str, Any]:
    block = GUIDE.split("<!-- alert-rules -->\n", 1)[1]
    match = FENCE.match(block)
    assert match is not None, "a code block must follow <!-- alert-rules -->"
    assert match.group(2).strip() == "yaml", "the alert rules are a yaml block"
    return cast(dict[str, Any], yaml.safe_load(match.group(3)))


def _shell_lines(languages: tuple[str, ...] = ("sh", "console", "ini")) -> Iterator[str]:
    """Command lines of the guide: backslash continuations joined, console prompts and ini keys dropped."""
    for language in languages:
        for body in _blocks(language):
            for line in body.replace("\\\n", " ").splitlines():
                if language == "console":
                    if not line.startswith("$ "):
                        continue
                    line = line[2:]
                if language == "ini":
                    if not line.startswith("ExecStart"):
                        continue
                    line = line.partition("=")[2].replace("%i", "1")  # a systemd instance, e.g. worker@1
                yield line


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def _until_operator(tokens: list[str]) -> list[str]:
    return list(itertools.takewhile(lambda token: not SHELL_OPERATORS.match(token), tokens))


def _invocations() -> list[list[str]]:
    """The arguments of every `stockaj-rules ...` shown: run directly, or by the image's entrypoint.

    `docker run ... stockaj-rules worker` and `docker compose run ... receiver check` count too.
    """
    found = []
    engine_services = set(_engine_commands())
    for line in _shell_lines():
        tokens = _tokens(line)
        for index, token in enumerate(tokens):
            named = index > 0 and tokens[index - 1] in ("-t", "--tag", "--name")
            if PROGRAM.search(token) and not named:
                found.append(_until_operator(tokens[index + 1 :]))
        for verb, service, args in _compose_commands(tokens):
            if verb == "run" and service in engine_services:
                found.append(args)
    return [args for args in found if args]  # bare: the image's default command, or `cd stockaj-rules`


def _compose() -> dict[str, Any]:
    if not COMPOSE.exists():
        pytest.skip("no docker-compose.yml")
    return cast(dict[str, Any], yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))


def _engine_commands() -> dict[str, list[str]]:
    """The Compose services that run the engine's image, with their commands."""
    if not COMPOSE.exists():
        return {}
    services = _compose()["services"]
    return {
        name: list(service.get("command", []))
        for name, service in services.items()
        if "stockaj" in str(service.get("image", ""))
    }


def _compose_commands(tokens: list[str]) -> Iterator[tuple[str, str, list[str]]]:
    """`docker compose VERB [options] SERVICE [args]` in a command line: (verb, service, args) each."""
    for index in (i for i in range(len(tokens) - 2) if tokens[i : i + 2] == ["docker", "compose"]):
        verb, rest = tokens[index + 2], _until_operator(tokens[index + 3 :])
        positional = [token for token in rest if not token.startswith("-")]
        if verb in ("exec", "run"):  # one service, then the command it runs
            if positional:
                start = rest.index(positional[0])
                yield verb, positional[0], rest[start + 1 :]
        else:
            yield from ((verb, token.partition("=")[0], []) for token in positional)  # --scale worker=4


def _exposed() -> dict[str, tuple[str, str, frozenset[str]]]:
    """Every series name the engine's registry exposes: (family, type, label names)."""
    metrics = Metrics()
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase) and collector._labelnames:
            collector.labels(*("x" for _ in collector._labelnames))  # a child, so its series show
    series = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            labels = frozenset(sample.labels) - {"le"}
            series[sample.name] = (family.name, family.type, labels)
    return series


def _allowed_values() -> dict[tuple[str, str], set[str]]:
    """Label values the engine really uses, for the labels whose values are a closed set."""
    help_text = Metrics().deliveries_received._documentation
    received = re.search(r"\(([^)]*)\)", help_text)
    assert received is not None
    return {
        ("stockaj_deliveries_processed", "status"): FINISHED,
        ("stockaj_rule_outcomes", "status"): {status.value for status in RuleStatus},
        # A skipped action (an earlier one of its rule failed) never runs, so is not counted.
        ("stockaj_action_runs", "outcome"): {status.value for status in ActionStatus} - {"skipped"},
        ("stockaj_deliveries_received", "outcome"): {word.strip() for word in received.group(1).split(",")},
    }


# --- settings ------------------------------------------------------------------------------------


def test_settings_table_names_exactly_the_settings_config_reads() -> None:
    documented = [_code(row[0])[0] for row in _table("settings")]
    assert len(documented) == len(set(documented)), "a setting is listed twice"
    assert set(documented) == {*SETTINGS, SECRET_ROW}
    assert secret_variables({f"{SECRET_PREFIX}ERP_TOKEN": "t"}) == {"ERP_TOKEN": "t"}


def test_only_config_reads_the_environment() -> None:
    readers = [
        path.relative_to(REPO).as_posix()
        for folder in ("engine", "actions")
        for path in (REPO / folder).rglob("*.py")
        if re.search(r"\bos\.environ\b|\bgetenv\(", path.read_text(encoding="utf-8"))
    ]
    assert readers == ["engine/config.py"], "a setting read elsewhere would be missing from the guide"


def test_settings_table_defaults_are_the_engines() -> None:
    for row in _table("settings"):
        name, default = _code(row[0])[0], row[1]
        field = SETTINGS.get(name)
        if field is None or field.default_factory is not None:
            continue
        value = field.default
        if value is None:
            assert re.search(r"\b(unset|none)\b", default), f"{name}: default {default!r} should say unset"
        else:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            shown = shown.lower() if isinstance(value, bool) else shown  # as written: CONSOLE_READ_ONLY=false
            assert shown in _code(default) or f"./{shown}" in _code(default), f"{name}: default is {shown}"


@pytest.mark.parametrize("row", _table("settings"), ids=lambda row: _code(row[0])[0])
def test_settings_table_examples_are_accepted(row: list[str]) -> None:
    name = _code(row[0])[0]
    if name == SECRET_ROW:
        return
    example = _code(row[3])[0]
    settings = load_settings({name: example})  # raises ConfigurationError on a bad value
    assert getattr(settings, name.lower()) is not None


def test_action_settings_table_is_every_setting_the_built_in_actions_declare_per_action() -> None:
    rows = _table("action-settings")
    documented = [(_code(row[0])[0], _code(row[1])[0], row[2], row[3]) for row in rows]
    declared = {
        (plugin.type_name, setting.variable, setting.kind.name, "yes" if setting.required else "no")
        for plugin in BUILT_IN_ACTIONS
        for setting in plugin.settings
    }
    assert len(documented) == len(set(documented)), "a setting is listed twice"
    assert set(documented) == declared
    actions = [action for action, *_ in documented]
    assert actions == sorted(actions), "the rows of one action are together, the actions in order"


@pytest.mark.parametrize("row", _table("action-settings"), ids=lambda row: _code(row[1])[0])
def test_action_settings_table_examples_are_accepted(row: list[str]) -> None:
    variable, example = _code(row[1])[0], _code(row[5])[0]
    settings = load_settings({variable: example})  # raises ConfigurationError on a bad value
    assert settings.plugins.values[variable]


def test_kinds_table_names_every_kind_a_setting_may_have() -> None:
    assert [row[0] for row in _table("kinds")] == [kind.name for kind in KINDS]


# --- metrics and alert rules --------------------------------------------------------------------


def test_metrics_table_is_every_metric_with_its_type_and_labels() -> None:
    families = {family: (kind, labels) for family, kind, labels in _exposed().values()}
    documented = {}
    for row in _table("metrics"):
        name, kind, labels = _code(row[0])[0], row[1], frozenset(_code(row[2]))
        family = name.removesuffix("_total") if kind == "counter" else name
        assert family in families, f"{name} is not a metric of engine/pipeline/metrics.py"
        assert (kind, labels) == families[family], f"{name}: the engine has {families[family]}"
        documented[family] = name
    assert set(documented) == set(families), "every metric is in the table"


def test_metrics_table_lists_the_label_values_the_engine_uses() -> None:
    rows = {_code(row[0])[0]: row for row in _table("metrics")}
    for (family, label), values in _allowed_values().items():
        row = rows[family + "_total"]
        assert set(_code(row[3])) - {label} >= values, f"{family}: {label} takes {sorted(values)}"


def test_alert_rules_are_a_prometheus_rule_file() -> None:
    document = _alert_rules()
    assert set(document) == {"groups"}
    assert document["groups"]
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"}
        assert isinstance(group["name"], str)
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"]), rule
            expr = rule["expr"]
            assert isinstance(expr, str)
            for left, right in ("()", "[]", "{}"):
                assert expr.count(left) == expr.count(right), f"{rule['alert']}: unbalanced {left}{right}"
            assert all(re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", d) for d in re.findall(r"\[([^\]]*)\]", expr))
            if "for" in rule:
                assert re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", rule["for"]), rule["for"]
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in rule.get(key, {}).values()), (rule["alert"], key)


def _alert_exprs() -> dict[str, str]:
    return {r["alert"]: r["expr"] for group in _alert_rules()["groups"] for r in group["rules"]}


@pytest.mark.parametrize("alert", list(_alert_exprs()))
def test_alert_rule_metrics_labels_and_values_exist(alert: str) -> None:
    expr, series, allowed = _alert_exprs()[alert], _exposed(), _allowed_values()
    for name, selector in re.findall(r"\b(stockaj_\w+)(\{[^}]*\})?", expr):
        assert name in series, f"{alert}: {name} is not exposed by the engine"
        family, _, labels = series[name]
        for label, operator, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', selector):
            assert label in labels, f"{alert}: {name} has no label {label!r}"
            if operator == "=" and (family, label) in allowed:
                assert value in allowed[(family, label)], f"{alert}: {label}={value!r} never happens"


def test_alert_rules_cover_failures_backlog_and_signatures() -> None:
    exprs = " ".join(_alert_exprs().values())
    assert 'stockaj_deliveries_processed_total{status="failed"}' in exprs
    assert "stockaj_queue_lag_seconds" in exprs
    assert 'stockaj_action_runs_total{outcome="pending"}' in exprs
    assert "stockaj_signature_failures_total" in exprs


def test_every_yaml_block_parses() -> None:
    blocks = _blocks("yaml")
    assert len(blocks) >= 2
    for block in blocks:
        yaml.safe_load(block)


# --- commands, routes, containers -----------------------------------------------------------------


def _parse(args: list[str]) -> None:
    command: click.Command = cli
    path = ["stockaj-rules"]
    while isinstance(command, click.Group):
        assert args, f"{' '.join(path)} needs a subcommand"
        name, args = args[0], args[1:]
        found = command.get_command(click.Context(command), name)  # operator commands load lazily
        assert found is not None, f"{' '.join(path)} has no command {name!r}"
        command, path = found, [*path, name]
    command.make_context(" ".join(path), list(args))  # raises a click.UsageError when wrong


def test_the_guide_shows_the_operator_commands() -> None:
    shown = {tuple(args[:2]) if args[0] in ("deliveries", "db") else args[0] for args in _invocations()}
    for command in ("serve", "worker", "send", "redeliver"):
        assert command in shown
    assert {("deliveries", "list"), ("deliveries", "show"), ("db", "upgrade")} <= shown


@pytest.mark.parametrize("args", _invocations(), ids=" ".join)
def test_every_command_in_the_guide_parses(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # `send fixtures/...` names a shipped fixture
    _parse(args)


async def _nothing() -> None:
    return None


async def _no_checks() -> dict[str, Any]:
    return {}


def test_every_path_curl_fetches_is_a_receiver_route() -> None:
    parts = ReceiverParts(
        secrets=("secret",),
        max_body_bytes=1,
        intake=cast(Any, None),
        metrics=Metrics(),
        readiness=_no_checks,
        refresh_metrics=_nothing,
    )
    routes = {rule.rule for rule in create_app(parts).url_map.iter_rules()}
    fetched = [
        url.split("/", 3)[3]
        for line in _shell_lines(("sh",))
        if "curl " in line
        for url in re.findall(r"https?://[^\s\"']+", line)
    ]
    assert {"healthz", "readyz", "metrics"} <= set(fetched)
    for path in fetched:
        assert "/" + path in routes


def test_compose_services_in_the_guide_exist_and_all_are_described() -> None:
    services = set(_compose()["services"])
    named = {service for line in _shell_lines(("sh",)) for _, service, _ in _compose_commands(_tokens(line))}
    assert named, "the guide shows docker compose commands"
    assert named <= services, f"not services of docker-compose.yml: {sorted(named - services)}"
    for service in services:
        assert f"`{service}`" in GUIDE, f"the guide does not describe the {service} service"


def _metrics_port(service: str) -> int | None:
    """The port a Compose service serves metrics on: its --metrics-port, else its METRICS_PORT."""
    command = _engine_commands()[service]
    if "--metrics-port" in command:
        return int(command[command.index("--metrics-port") + 1])
    environment = _compose()["services"][service].get("environment", {})
    return int(environment["METRICS_PORT"]) if "METRICS_PORT" in environment else None


def test_compose_engine_commands_parse_and_metrics_ports_match_the_scrape_config() -> None:
    _compose()  # skips without docker-compose.yml
    commands = _engine_commands()
    assert {"receiver", "worker", "migrate"} <= set(commands), "the engine's services run its image"
    for command in commands.values():
        _parse(command)
    scrape = next(yaml.safe_load(b) for b in _blocks("yaml") if "scrape_configs" in b)
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    worker_ports = [c["port"] for c in jobs["stockaj-worker"]["dns_sd_configs"]]
    assert worker_ports == [_metrics_port("worker")]
    receiver_port = _metrics_port("receiver") or 8000  # without METRICS_PORT: the webhook port
    targets = [t for c in jobs["stockaj-receiver"]["static_configs"] for t in c["targets"]]
    assert targets == [f"receiver:{receiver_port}"]


def test_container_paths_in_the_guide_are_the_images() -> None:
    if not DOCKERFILE.exists():
        pytest.skip("no Dockerfile")
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    targets = {
        target
        for line in _shell_lines(("sh",))
        for target in re.findall(r'-v\s+"?[^\s:"]+:(/[^\s:"]+)', line)
    }
    assert {"/app/rules", "/app/data"} <= targets
    for target in targets:
        assert target in dockerfile, f"the image has nothing at {target}"


def test_env_example_holds_every_setting_and_only_real_variables() -> None:
    if not ENV_EXAMPLE.exists():
        pytest.skip("no .env.example")
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    compose_variables = (
        set(re.findall(r"\$\{(\w+)", COMPOSE.read_text(encoding="utf-8"))) if COMPOSE.exists() else set()
    )
    listed = re.findall(r"^#?[ \t]*([A-Z][A-Z0-9_]*)=(.*)$", text, re.MULTILINE)
    for name, _ in listed:
        real = (
            name in {*SETTINGS, *ACTION_SETTINGS}
            or name.startswith(SECRET_PREFIX)
            or name in compose_variables
        )
        assert real, f".env.example: {name} is neither a setting nor a variable of docker-compose.yml"
    assert {*SETTINGS, *ACTION_SETTINGS} <= {name for name, _ in listed}, (
        "every setting is listed in .env.example"
    )
    active = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, re.MULTILINE))
    load_settings({name: value for name, value in active.items() if name in {*SETTINGS, *ACTION_SETTINGS}})


# --- links -----------------------------------------------------------------------------------------


def _slugs(markdown: str) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.DOTALL), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_links_lead_somewhere() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "(docs/operations.md)" in readme, "README links the operator's guide"
    for target in re.findall(r"\]\(([^)\s]+)\)", GUIDE):
        if target.startswith("http"):
            continue
        file, _, anchor = target.partition("#")
        document = (REPO / "docs" / file).read_text(encoding="utf-8") if file else GUIDE
        if anchor:
            assert anchor in _slugs(document), f"no heading for {target}"
