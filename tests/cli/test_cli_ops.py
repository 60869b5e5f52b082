"""The operator commands (spec sections 6, 9, 10): serve, worker, send, deliveries, redeliver, db.

Commands that touch the store run against a real SQLite file in `tmp_path` and
against the real PostgreSQL (a fresh database per test). `send` and the actions
of redelivered deliveries talk to a real HTTP server on 127.0.0.1 that records
every request. Start-up refusals run the installed console script in a
subprocess, to see exactly what a shell sees: one line, exit 2, no traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import respx
from click.testing import CliRunner, Result
from sqlalchemy.ext.asyncio import create_async_engine

from actions.base import DatabaseEngines
from actions.registry import load_registry
from engine.cli.main import cli
from engine.config import Settings
from engine.config_plugins import PluginSettings
from engine.language.fixtures import load_fixtures
from engine.language.harness import replay
from engine.language.loader import load_rules
from engine.pipeline.metrics import Metrics
from engine.pipeline.retry import RetryPolicy
from engine.pipeline.worker import DeliveryProcessor
from engine.secrets import Masker
from engine.signing import verify
from engine.store import ActionRun, NewDelivery, Store, database
from engine.store.tables import ActionStatus, DeliveryStatus
from engine.testing import migrate, sqlite_url
from tests.store.helpers import claim_one, finish_run, save_action_run

T = TypeVar("T")

WEBHOOK_SECRET = "whsec-cli-5ecret-31"
PO_TOKEN = "po-t0ken-5ecret-77"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
LOW_STOCK = {
    "event": "item.low_stock",
    "timestamp": "2026-03-01T09:00:00Z",
    "data": {"id": 42, "name": "Tent 4p", "quantity": 3, "minimum_quantity": 5, "external_id": "TENT-4P"},
}
# Every variable that changes what a command reads; each run starts without them.
_CONFIG_VARIABLES = tuple(name.upper() for name in Settings.model_fields)


def rules_text(base_url: str, on: str = "item.low_stock") -> str:
    return f"""\
- id: reorder
  on: {on}
  when: {{"<=": [{{var: data.quantity}}, {{var: data.minimum_quantity}}]}}
  actions:
    - type: http
      url: {base_url}/orders
      headers: {{Authorization: "Bearer {{{{ secrets.PO_TOKEN }}}}"}}
      json:
        sku: "{{{{ data.external_id }}}}"
        quantity: "{{{{ data.minimum_quantity * 2 - data.quantity }}}}"
    - type: log
      message: "ordered {{{{ data.external_id }}}}"
- id: rentals
  on: rent.created
  actions: [{{type: log, message: "rental {{{{ data.id }}}}"}}]
"""


# --- a real HTTP server that records what it is sent ---------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass
class RecordingServer:
    """Answers every request with the next of `statuses` (then 200) and records it."""

    url: str = ""
    requests: list[Request] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    recording = RecordingServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            recording.requests.append(Request("POST", self.path, dict(self.headers.items()), body))
            status = recording.statuses.pop(0) if recording.statuses else 200
            answer = json.dumps({"status": status}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    recording.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield recording
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# --- the store, the environment and the CLI ---------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated store: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("fresh_postgres_url")
    else:
        url = sqlite_url(tmp_path)
    return migrate(url)


@pytest.fixture
def rules_dir(tmp_path: Path, server: RecordingServer) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "rules.yaml").write_text(rules_text(server.url))
    return folder


def env_for(store_url: str, rules_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": store_url,
        "RULES_DIR": str(rules_dir),
        "SECRET_PO_TOKEN": PO_TOKEN,
        "LOG_FORMAT": "json",
        **extra,
    }


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """The CLI in-process; an exception escaping it fails the test (it would be a traceback)."""
    clean: dict[str, str | None] = {name: None for name in _CONFIG_VARIABLES}
    clean.update({name: None for name in os.environ if name.startswith("SECRET_")})
    clean.update(env or {})
    return CliRunner().invoke(cli, list(args), env=clean, catch_exceptions=False)


def shell(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a shell runs it."""
    return subprocess.run(
        [_console_script(), *args],
        env=_process_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _console_script() -> str:
    found = shutil.which("stockaj-rules", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("the stockaj-rules console script is not installed next to this Python")
    return found


def _process_env(extra: dict[str, str] | None) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in _CONFIG_VARIABLES and not name.startswith("SECRET_")
    }
    environment.update(extra or {})
    return environment


def with_store(url: str, work: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = database.create_engine(url)
        try:
            return await work(Store(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


def store_delivery(url: str, delivery_id: str, payload: dict[str, Any] | None = None) -> None:
    payload = payload or LOW_STOCK
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-Stockaj-Event": str(payload["event"])}
    new = NewDelivery(delivery_id, str(payload["event"]), headers, body, T0)

    async def add(store: Store) -> None:
        assert await store.add_deliveries([new], due_at=T0) == {delivery_id}

    with_store(url, add)


def one_line(text: str) -> str:
    assert text.endswith("\n"), text
    assert text.count("\n") == 1, text
    return text.strip()


# --- db upgrade ------------------------------------------------------------------------------


def test_db_upgrade_creates_the_schema_on_sqlite_then_deliveries_list_works(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"

    upgraded = run("db", "upgrade", env={"DATABASE_URL": url})
    again = run("db", "upgrade", env={"DATABASE_URL": url})
    listed = run("deliveries", "list", env={"DATABASE_URL": url})

    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.stdout.startswith("database schema is up to date")
    assert again.exit_code == 0
    assert (listed.exit_code, listed.stdout) == (0, "no deliveries\n")


def test_db_upgrade_creates_the_schema_on_postgresql_then_deliveries_list_works(
    fresh_postgres_url: str,
) -> None:
    upgraded = run("db", "upgrade", env={"DATABASE_URL": fresh_postgres_url})
    again = run("db", "upgrade", env={"DATABASE_URL": fresh_postgres_url})
    store_delivery(fresh_postgres_url, "pg-1")
    listed = run("deliveries", "list", env={"DATABASE_URL": fresh_postgres_url})

    assert upgraded.exit_code == 0, upgraded.output
    assert again.exit_code == 0
    assert listed.exit_code == 0
    assert "pg-1" in listed.stdout
    assert "received" in listed.stdout


def test_deliveries_list_on_a_postgresql_database_never_upgraded_says_to_run_db_upgrade(
    fresh_postgres_url: str,
) -> None:
    completed = shell("deliveries", "list", env={"DATABASE_URL": fresh_postgres_url})

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert "run `stockaj-rules db upgrade`" in one_line(completed.stderr)


def test_db_upgrade_of_an_unreachable_database_is_one_line_without_the_password() -> None:
    url = "postgresql+asyncpg://app:db-pa55word@127.0.0.1:1/app"

    completed = shell("db", "upgrade", env={"DATABASE_URL": url})

    assert completed.returncode == 2
    line = one_line(completed.stderr)
    assert line.startswith(
        "configuration error: cannot upgrade the database at postgresql+asyncpg://app:***@"
    )
    assert "db-pa55word" not in completed.stderr


# --- send ------------------------------------------------------------------------------------


def write_fixture(tmp_path: Path, **fields: Any) -> Path:
    path = tmp_path / "delivery.json"
    path.write_text(
        json.dumps({"name": "tent low", "event": "item.low_stock", "payload": LOW_STOCK, **fields})
    )
    return path


def test_send_signs_the_fixture_exactly_as_stockaj_does(tmp_path: Path, server: RecordingServer) -> None:
    fixture = write_fixture(tmp_path, delivery_id="d-42")

    result = run(
        "send",
        str(fixture),
        "--url",
        f"{server.url}/webhooks/stockaj",
        env={"STOCKAJ_WEBHOOK_SECRET": WEBHOOK_SECRET},
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("tent low: 200 ")
    [sent] = server.requests
    assert (sent.method, sent.path) == ("POST", "/webhooks/stockaj")
    assert verify(sent.body, sent.header("X-Stockaj-Signature"), [WEBHOOK_SECRET])
    assert not verify(sent.body, sent.header("X-Stockaj-Signature"), ["another-secret"])
    assert sent.header("X-Stockaj-Event") == "item.low_stock"
    assert sent.header("X-Stockaj-Delivery") == "d-42"
    assert sent.header("Content-Type") == "application/json"
    assert json.loads(sent.body) == LOW_STOCK


def test_send_gives_a_fixture_without_delivery_id_a_new_id_each_time(
    tmp_path: Path, server: RecordingServer
) -> None:
    fixture = write_fixture(tmp_path)
    env = {"STOCKAJ_WEBHOOK_SECRET": WEBHOOK_SECRET}

    run("send", str(fixture), "--url", server.url, env=env)
    run("send", str(fixture), "--url", server.url, env=env)

    first, second = (request.header("X-Stockaj-Delivery") for request in server.requests)
    assert first
    assert second
    assert first != second


def test_send_exits_1_when_the_receiver_does_not_answer_2xx(tmp_path: Path, server: RecordingServer) -> None:
    server.statuses = [401]

    result = run("send", str(write_fixture(tmp_path)), "--url", server.url, "--secret", WEBHOOK_SECRET)

    assert result.exit_code == 1
    assert result.stdout.startswith("tent low: 401 ")


def test_send_exits_1_when_the_url_does_not_answer(tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # closed on leaving: nothing listens there

    result = run(
        "send", str(write_fixture(tmp_path)), "--url", f"http://127.0.0.1:{port}/", "--secret", "s3cret"
    )

    assert result.exit_code == 1
    assert f"tent low: could not reach http://127.0.0.1:{port}/: ConnectError" in result.stderr


def test_send_secret_option_overrides_the_webhook_secret_variable(
    tmp_path: Path, server: RecordingServer
) -> None:
    result = run(
        "send",
        str(write_fixture(tmp_path)),
        "--url",
        server.url,
        "--secret",
        "option-5ecret",
        env={"STOCKAJ_WEBHOOK_SECRET": WEBHOOK_SECRET},
    )

    assert result.exit_code == 0
    [sent] = server.requests
    assert verify(sent.body, sent.header("X-Stockaj-Signature"), ["option-5ecret"])
    assert not verify(sent.body, sent.header("X-Stockaj-Signature"), [WEBHOOK_SECRET])


def test_send_without_any_secret_is_one_line_with_exit_2(tmp_path: Path, server: RecordingServer) -> None:
    completed = shell("send", str(write_fixture(tmp_path)), "--url", server.url)

    assert completed.returncode == 2
    assert one_line(completed.stderr) == (
        "configuration error: no secret: pass --secret or set STOCKAJ_WEBHOOK_SECRET"
    )
    assert not server.requests


def test_send_refuses_a_url_that_is_not_http_with_exit_2(tmp_path: Path) -> None:
    result = run("send", str(write_fixture(tmp_path)), "--url", "127.0.0.1:8000", "--secret", "s3cret")

    assert result.exit_code == 2
    assert "is not an http(s) URL; write e.g. http://127.0.0.1:8000/webhooks/stockaj" in result.stderr


# --- deliveries list / show / export ----------------------------------------------------------


def test_deliveries_list_shows_the_newest_first_and_filters_by_status(store_url: str) -> None:
    store_delivery(store_url, "older")

    async def newer_and_finished(store: Store) -> None:
        new = NewDelivery("newer", "rent.created", {}, b'{"data": {}}', T0 + timedelta(minutes=5))
        await store.add_deliveries([new], due_at=T0)
        await finish_run(store, "older", DeliveryStatus.DONE, T0, None, None)

    with_store(store_url, newer_and_finished)

    everything = run("deliveries", "list", env={"DATABASE_URL": store_url})
    done = run("deliveries", "list", "--status", "done", env={"DATABASE_URL": store_url})
    failed = run("deliveries", "list", "--status", "failed", env={"DATABASE_URL": store_url})

    rows = everything.stdout.splitlines()[1:]
    assert [row.split()[-1] for row in rows] == ["newer", "older"]
    assert rows[1].split()[:3] == ["2026-03-01T09:00:00+00:00", "done", "item.low_stock"]
    assert [row.split()[-1] for row in done.stdout.splitlines()[1:]] == ["older"]
    assert failed.stdout == "no deliveries with status failed\n"


@pytest.fixture
async def processed(tmp_path: Path, store_url: str) -> str:
    """A delivery processed by the real DeliveryProcessor; the purchase-order system answers 201."""
    folder = tmp_path / "processed-rules"
    folder.mkdir()
    (folder / "rules.yaml").write_text(rules_text("https://po.example.com"))
    rule_set = load_rules(folder, load_registry())
    engine = database.create_engine(store_url)
    store = Store(engine)
    body = json.dumps(LOW_STOCK).encode()
    headers = {"X-Stockaj-Event": "item.low_stock", "X-Stockaj-Delivery": "shown-1"}
    await store.add_deliveries([NewDelivery("shown-1", "item.low_stock", headers, body, T0)], due_at=T0)
    async with httpx.AsyncClient() as http, respx.mock(assert_all_called=True) as mock:
        mock.post("https://po.example.com/orders").respond(201, json={"id": "PO-1"})
        processor = DeliveryProcessor(
            store=store,
            rules=lambda: rule_set,
            http=http,
            databases=DatabaseEngines(lambda url: create_async_engine(url)),
            action_settings=PluginSettings(),
            secrets={"PO_TOKEN": PO_TOKEN},
            masker=Masker([PO_TOKEN]),
            metrics=Metrics(),
            retry=RetryPolicy(max_attempts=2, base_seconds=0.01),
            requeue_after=timedelta(seconds=60),
        )
        assert await processor.process("shown-1") is None
        assert mock.calls.last.request.headers["Authorization"] == f"Bearer {PO_TOKEN}"
    await engine.dispose()
    return "shown-1"


def test_deliveries_show_tells_the_whole_story_of_a_processed_delivery(
    processed: str, store_url: str, rules_dir: Path
) -> None:
    result = run("deliveries", "show", processed, env=env_for(store_url, rules_dir))

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("delivery shown-1\n  event     item.low_stock\n  status    done\n")
    assert "headers\n  X-Stockaj-Event: item.low_stock\n  X-Stockaj-Delivery: shown-1\n" in out
    assert '    "external_id": "TENT-4P"' in out  # the body, pretty-printed
    assert "  ✓ reorder  fired: data.quantity (3) <= data.minimum_quantity (5) -> true\n" in out
    assert "  · rentals  event item.low_stock does not match on: rent.created\n" in out
    assert "  reorder actions[0] http: succeeded, 1 attempt(s), response 201\n" in out
    assert "      sent to:      https://po.example.com/orders\n" in out
    assert '"Authorization": "Bearer ***"' in out
    assert '"json": {"sku": "TENT-4P", "quantity": 7}' in out
    assert "  reorder actions[1] log: succeeded, 1 attempt(s)\n" in out
    assert PO_TOKEN not in result.output


def test_deliveries_list_and_show_escape_control_and_bidi_characters_of_rows_stored_before_they_were_refused(
    store_url: str, rules_dir: Path
) -> None:
    # The receiver refuses such ids and events now; a store may still hold some from before.
    sneaky_id, sneaky_event = "dlv-\u202eexe.txt", "item.low\x85stock"
    new = NewDelivery(sneaky_id, sneaky_event, {"User-Agent": "ua\u2066x\x9b"}, b"{}", T0)

    async def add(store: Store) -> None:
        await store.add_deliveries([new], due_at=T0)

    with_store(store_url, add)

    listed = run("deliveries", "list", env={"DATABASE_URL": store_url})
    shown = run("deliveries", "show", sneaky_id, env=env_for(store_url, rules_dir))

    assert shown.exit_code == 0, shown.output
    for output in (listed.stdout, shown.stdout):
        assert "dlv-\\u202eexe.txt" in output
        assert "item.low\\x85stock" in output
        assert not any(character in output for character in "\u202e\x85\u2066\x9b")
    assert "  User-Agent: ua\\u2066x\\x9b\n" in shown.stdout


def test_deliveries_show_masks_secrets_and_shows_errors_attempts_and_next_attempt(
    store_url: str, rules_dir: Path
) -> None:
    store_delivery(store_url, "leaky", {**LOW_STOCK, "note": f"token {PO_TOKEN}"})
    run_row = ActionRun(
        rule_id="reorder",
        action_index=0,
        type="http",
        status=ActionStatus.PENDING,
        params={"headers": {"Authorization": f"Bearer {PO_TOKEN}"}},
        attempts=3,
        last_error=f"POST answered 503 for token {PO_TOKEN}",
        response_status=503,
        next_attempt_at=T0 + timedelta(minutes=2),
        updated_at=T0,
    )

    async def record(store: Store) -> None:
        await finish_run(
            store,
            "leaky",
            DeliveryStatus.DONE,
            T0,
            None,
            None,
            outcomes=[("reorder", "fired", f"with {PO_TOKEN}")],
        )
        await save_action_run(store, "leaky", run_row)
        await finish_run(store, "leaky", DeliveryStatus.PROCESSING, T0, T0, f"stuck on {PO_TOKEN}")

    with_store(store_url, record)

    result = run("deliveries", "show", "leaky", env=env_for(store_url, rules_dir))

    assert result.exit_code == 0, result.output
    assert PO_TOKEN not in result.output
    assert "  status    processing (stuck on ***)\n" in result.stdout
    assert "  ✓ reorder  fired: with ***\n" in result.stdout
    assert "  reorder actions[0] http: pending, 3 attempt(s), response 503\n" in result.stdout
    assert '      params:       {"headers": {"Authorization": "Bearer ***"}}\n' in result.stdout
    assert "      last error:   POST answered 503 for token ***\n" in result.stdout
    assert "      next attempt: 2026-03-01T09:02:00+00:00\n" in result.stdout
    assert '"note": "token ***"' in result.stdout


def test_deliveries_export_writes_a_fixture_that_replays_to_the_same_rule_outcomes(
    processed: str, store_url: str, rules_dir: Path, tmp_path: Path
) -> None:
    env = env_for(store_url, rules_dir)
    printed = run("deliveries", "export", processed, env=env)
    target = tmp_path / "fixtures" / "exported.json"
    target.parent.mkdir()
    written = run("deliveries", "export", processed, "--expect", "-o", str(target), env=env)

    assert printed.exit_code == 0, printed.output
    assert written.exit_code == 0, written.output
    exported = json.loads(printed.stdout)
    assert exported == {
        "name": "item.low_stock shown-1",
        "event": "item.low_stock",
        "delivery_id": "shown-1",
        "payload": LOW_STOCK,
    }
    assert json.loads(target.read_text())["expect"] == {"fired": ["reorder"], "not_fired": ["rentals"]}
    files, problems = load_fixtures([target])
    assert problems == []
    rules = load_rules(rules_dir, load_registry())
    [result] = asyncio.run(replay(rules, files, {}))
    replayed = {o.rule.id: o.status.value for o in result.outcomes}
    stored = with_store(store_url, lambda store: store.outcomes(processed))
    assert replayed == {row.rule_id: row.status for row in stored}
    tested = run("test", str(target), env=env)
    assert tested.exit_code == 0, tested.output
    assert "1 passed, 0 failed" in tested.stdout


def test_deliveries_export_of_a_delivery_whose_body_was_dropped_says_so(store_url: str) -> None:
    store_delivery(store_url, "old")

    async def purge(store: Store) -> None:
        await finish_run(store, "old", DeliveryStatus.DONE, T0, None, None)
        await store.purge(T0 + timedelta(days=2), timedelta(days=1), timedelta(days=90))

    with_store(store_url, purge)

    result = run("deliveries", "export", "old", env={"DATABASE_URL": store_url})

    assert result.exit_code == 1
    assert "body was dropped by retention (BODY_RETENTION_DAYS); nothing to export" in result.stderr


@pytest.fixture
def sqlite_store(tmp_path: Path) -> str:
    """A migrated SQLite store holding the delivery `low-1` (what is written does not depend on the store)."""
    url = migrate(sqlite_url(tmp_path))
    store_delivery(url, "low-1")
    return url


def _folder_listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_deliveries_export_refuses_to_overwrite_a_file_unless_forced(
    sqlite_store: str, tmp_path: Path
) -> None:
    target = tmp_path / "out" / "low.json"
    target.parent.mkdir()
    target.write_text("a fixture someone wrote by hand\n", encoding="utf-8")

    refused = run("deliveries", "export", "low-1", "-o", str(target), env={"DATABASE_URL": sqlite_store})
    forced = run(
        "deliveries", "export", "low-1", "-o", str(target), "--force", env={"DATABASE_URL": sqlite_store}
    )

    assert refused.exit_code == 2, refused.output
    assert refused.stderr == (
        f"cannot write the fixture: {target} already exists; "
        "pass --force to replace it, or give another --output path\n"
    )
    assert forced.exit_code == 0, forced.output
    assert json.loads(target.read_text(encoding="utf-8"))["delivery_id"] == "low-1"
    assert _folder_listing(target.parent) == ["low.json"], "no temporary file is left behind"


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "forced"])
@pytest.mark.parametrize("dangling", [False, True], ids=["to a file", "dangling"])
def test_deliveries_export_never_writes_through_a_symbolic_link(
    sqlite_store: str, tmp_path: Path, force: list[str], dangling: bool
) -> None:
    victim = tmp_path / "victim" / "authorized_keys"
    victim.parent.mkdir()
    if not dangling:
        victim.write_text("ssh-ed25519 AAAA precious\n", encoding="utf-8")
    link = tmp_path / "out" / "low.json"
    link.parent.mkdir()
    link.symlink_to(victim)

    result = run("deliveries", "export", "low-1", "-o", str(link), *force, env={"DATABASE_URL": sqlite_store})

    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"cannot write the fixture: {link} is a symbolic link: it is not written through; "
        "give another --output path, or remove what is there\n"
    )
    assert link.is_symlink()
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_text(encoding="utf-8") == "ssh-ed25519 AAAA precious\n"
    assert _folder_listing(link.parent) == ["low.json"]


def test_deliveries_export_refuses_a_folder_or_a_device_even_when_forced(
    sqlite_store: str, tmp_path: Path
) -> None:
    result = run(
        "deliveries", "export", "low-1", "-o", "/dev/null", "--force", env={"DATABASE_URL": sqlite_store}
    )

    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("cannot write the fixture: /dev/null exists and is not a regular file; ")


def test_deliveries_export_writes_a_new_file_whole_and_readable_by_others(
    sqlite_store: str, tmp_path: Path
) -> None:
    target = tmp_path / "low.json"

    result = run("deliveries", "export", "low-1", "-o", str(target), env={"DATABASE_URL": sqlite_store})

    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text(encoding="utf-8"))["delivery_id"] == "low-1"
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize(
    "command", [("deliveries", "show"), ("deliveries", "export"), ("redeliver",)], ids=" ".join
)
def test_an_unknown_delivery_id_is_a_clear_message_with_exit_1(
    command: tuple[str, ...], store_url: str, rules_dir: Path
) -> None:
    result = run(*command, "no-such-id", env=env_for(store_url, rules_dir))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == ("no delivery 'no-such-id' in the store (see: stockaj-rules deliveries list)\n")


# --- redeliver -------------------------------------------------------------------------------


def test_redeliver_runs_a_stored_delivery_through_the_current_rules(
    store_url: str, rules_dir: Path, server: RecordingServer
) -> None:
    env = env_for(store_url, rules_dir)
    (rules_dir / "rules.yaml").write_text(rules_text(server.url, on="item.updated"))
    store_delivery(store_url, "r-1")
    before = run("redeliver", "r-1", env=env)
    (rules_dir / "rules.yaml").write_text(rules_text(server.url))  # the rule now matches

    after = run("redeliver", "r-1", env=env)

    assert (before.exit_code, before.stdout) == (0, "r-1: no_match\n")
    assert (after.exit_code, after.stdout) == (0, "r-1: done\n"), after.output
    [order] = server.requests
    assert order.path == "/orders"
    assert order.header("Authorization") == f"Bearer {PO_TOKEN}"
    assert json.loads(order.body) == {"sku": "TENT-4P", "quantity": 7}


def test_redeliver_does_not_repeat_a_succeeded_action_unless_forced(
    store_url: str, rules_dir: Path, server: RecordingServer
) -> None:
    env = env_for(store_url, rules_dir)
    store_delivery(store_url, "r-2")

    first = run("redeliver", "r-2", env=env)
    second = run("redeliver", "r-2", env=env)
    assert len(server.requests) == 1
    forced = run("redeliver", "r-2", "--force", env=env)

    assert [first.stdout, second.stdout, forced.stdout] == ["r-2: done\n"] * 3
    assert len(server.requests) == 2
    keys = {request.header("Idempotency-Key") for request in server.requests}
    assert len(keys) == 1  # the same action of the same delivery: recognisable downstream
    ledger = with_store(store_url, lambda store: store.action_runs("r-2"))
    assert ledger[("reorder", 0)].status is ActionStatus.SUCCEEDED
    assert ledger[("reorder", 0)].attempts == 1  # --force starts the ledger afresh


def test_redeliver_tries_a_failed_action_again_and_exits_1_while_it_fails(
    store_url: str, rules_dir: Path, server: RecordingServer
) -> None:
    env = env_for(store_url, rules_dir, MAX_ATTEMPTS="1")
    store_delivery(store_url, "r-3")
    server.statuses = [422]

    failed = run("redeliver", "r-3", env=env)
    fixed = run("redeliver", "r-3", env=env)

    assert failed.exit_code == 1
    assert failed.stdout.startswith("r-3: failed: an action failed: reorder actions[0] (http): POST ")
    assert (fixed.exit_code, fixed.stdout) == (0, "r-3: done\n")
    assert len(server.requests) == 2


def test_redeliver_leaves_a_delivery_alone_while_a_run_holds_it(
    store_url: str, rules_dir: Path, server: RecordingServer
) -> None:
    env = env_for(store_url, rules_dir)
    store_delivery(store_url, "r-4")
    now = datetime.now(UTC)
    # A worker is processing it right now: claimed, its claim alive for another minute.
    with_store(store_url, lambda store: claim_one(store, "r-4", now, now + timedelta(minutes=1)))

    busy = run("redeliver", "r-4", env=env)

    assert busy.exit_code == 1
    assert busy.stdout.startswith("r-4: not redelivered: a run is processing it right now")
    assert server.requests == []
    stored = with_store(store_url, lambda store: store.get("r-4"))
    assert stored is not None
    assert (stored.status, stored.runs) == (DeliveryStatus.PROCESSING, 1)


# --- serve and worker refuse bad configuration -----------------------------------------------


def test_serve_without_webhook_secret_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    completed = shell("serve", cwd=tmp_path)

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert one_line(completed.stderr) == (
        "configuration error: STOCKAJ_WEBHOOK_SECRET is not set: "
        "set it to the webhook secret configured in Stockaj"
    )
    assert not (tmp_path / "stockaj-rules.db").exists()


def test_worker_without_redis_url_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    completed = shell("worker", cwd=tmp_path)

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert one_line(completed.stderr) == (
        "configuration error: REDIS_URL is not set: the worker takes its jobs from Redis; set it"
    )


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PORT", "eighty", "PORT: Input should be a valid integer"),
        ("PORT", "70000", "PORT: Input should be less than or equal to 65535"),
        ("DATABASE_URL", "nonsense://", "DATABASE_URL: unsupported database 'nonsense'"),
        (
            "DATABASE_URL",
            "postgresql+psycopg2://app:pw@db/app",
            "DATABASE_URL: driver 'psycopg2' is not supported",
        ),
        ("DATABASE_URL", "not a url", "DATABASE_URL: not a database URL"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL: not a Redis URL"),
        ("MAX_ATTEMPTS", "0", "MAX_ATTEMPTS: Input should be greater than or equal to 1"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
    ],
)
def test_bad_configuration_stops_serve_in_one_line_with_exit_2(
    variable: str, value: str, says: str, tmp_path: Path
) -> None:
    completed = shell("serve", env={"STOCKAJ_WEBHOOK_SECRET": WEBHOOK_SECRET, variable: value}, cwd=tmp_path)

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    line = one_line(completed.stderr)
    assert line.startswith(f"configuration error: {says}"), line
    assert line.endswith(f"fix {variable} in the environment")


def test_serve_with_a_port_option_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    completed = shell(
        "serve", "--port", "99999", env={"STOCKAJ_WEBHOOK_SECRET": WEBHOOK_SECRET}, cwd=tmp_path
    )

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert "Invalid value for '--port': 99999 is not in the range 0<=x<=65535" in completed.stderr


def test_serve_without_its_rules_folder_says_so_and_exits_2(tmp_path: Path) -> None:
    env = {
        "STOCKAJ_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RULES_DIR": str(tmp_path / "missing"),
        "LOG_LEVEL": "WARNING",
    }

    completed = shell("serve", "--port", "0", env=env, cwd=tmp_path)

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert completed.stderr.splitlines() == [
        f"{tmp_path / 'missing'}:1:1: rules folder not found; create it or set RULES_DIR",
        "fix the rules above (stockaj-rules check lists every problem)",
    ]


def test_serve_on_a_port_in_use_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"STOCKAJ_WEBHOOK_SECRET": WEBHOOK_SECRET, "RULES_DIR": str(tmp_path / "rules")}

        completed = shell("serve", "--port", str(port), env=env, cwd=tmp_path)

    assert completed.returncode == 2
    assert one_line(completed.stderr) == (
        f"configuration error: cannot listen on 127.0.0.1:{port}: Address already in use; "
        "choose another PORT (or --port), or stop the process that uses it"
    )
    assert not (tmp_path / "stockaj-rules.db").exists()  # refused before anything started


def test_serve_on_an_address_not_of_this_machine_says_fix_host(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    env = {"STOCKAJ_WEBHOOK_SECRET": WEBHOOK_SECRET, "RULES_DIR": str(tmp_path / "rules")}

    completed = shell("serve", "--host", "192.0.2.1", "--port", "0", env=env, cwd=tmp_path)

    assert completed.returncode == 2
    line = one_line(completed.stderr)
    assert line.startswith("configuration error: cannot listen on 192.0.2.1:"), line
    assert line.endswith("fix HOST (or --host): it must be an address of this machine"), line


def test_serve_with_an_unreachable_postgresql_is_one_line_without_the_password(tmp_path: Path) -> None:
    env = {
        "STOCKAJ_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "DATABASE_URL": "postgresql+asyncpg://app:db-pa55word@127.0.0.1:1/app",
        "RULES_DIR": str(tmp_path),
    }

    completed = shell("serve", "--port", "0", env=env, cwd=tmp_path)

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert one_line(completed.stderr).startswith("configuration error: cannot open DATABASE_URL: ")
    assert "db-pa55word" not in completed.stderr


def test_worker_with_an_unreachable_redis_says_so_in_one_line(tmp_path: Path) -> None:
    env = {
        "REDIS_URL": f"redis://:redis-pa55word@127.0.0.1:{_free_port()}/0",
        "RULES_DIR": str(tmp_path),
        "LOG_LEVEL": "ERROR",
    }

    completed = shell("worker", env=env, cwd=tmp_path)

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    line = one_line(completed.stderr)
    assert line.startswith("configuration error: cannot reach REDIS_URL (redis://:***@127.0.0.1:"), line
    assert line.endswith("; start Redis or fix REDIS_URL")


# --- the try-it loop: serve, send, deliveries show -------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until(check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail("timed out")


def test_serve_then_send_then_deliveries_show_with_json_logs_that_hide_secrets(
    tmp_path: Path, rules_dir: Path, server: RecordingServer
) -> None:
    env = env_for(
        f"sqlite+aiosqlite:///{tmp_path / 'live.db'}", rules_dir, STOCKAJ_WEBHOOK_SECRET=WEBHOOK_SECRET
    )
    log = tmp_path / "serve.log"
    with log.open("w") as stderr_file:
        receiver = subprocess.Popen(
            [_console_script(), "serve", "--port", "0"],  # a free port: serve says which
            env=_process_env(env),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
            text=True,
        )
    try:
        _wait_until(lambda: "listening on http://127.0.0.1:" in log.read_text())
        url = next(
            json.loads(line)["event"] for line in log.read_text().splitlines() if "listening on" in line
        )
        url = url.removeprefix("listening on ")
        _wait_until(lambda: _answers(f"{url}/healthz"))
        fixture = write_fixture(tmp_path, delivery_id="live-1")
        sent = shell("send", str(fixture), "--url", f"{url}/webhooks/stockaj", env=env)
        assert sent.returncode == 0, sent.stderr
        assert '"duplicate":false' in sent.stdout
        _wait_until(lambda: "status    done" in shell("deliveries", "show", "live-1", env=env).stdout)
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=30)
    stderr = log.read_text()

    assert len(server.requests) == 1
    shown = shell("deliveries", "show", "live-1", env=env).stdout
    assert "  reorder actions[0] http: succeeded, 1 attempt(s), response 200" in shown
    assert "Traceback" not in stderr
    lines = [json.loads(line) for line in stderr.splitlines()]  # every line is one JSON object
    outcomes = [line for line in lines if line.get("delivery_id") == "live-1" and "status" in line]
    assert [(line["status"], line["level"]) for line in outcomes] == [("done", "info")]
    assert WEBHOOK_SECRET not in stderr
    assert PO_TOKEN not in stderr


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
