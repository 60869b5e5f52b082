"""`stockaj-rules doctor`: a healthy engine, and each broken part found with its fix.

The findings are read from a real store (SQLite and the real PostgreSQL), real rule
folders and the real Redis; the command itself runs as a shell runs it.
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.config import Settings, load_settings
from engine.pipeline.doctor import DEVELOPMENT_SECRET, Finding, Severity, examine, healthy
from engine.pipeline.health_records import SignatureFailureTally, record_health
from engine.secrets import Masker
from engine.store import NewDelivery, Store, database
from engine.store.tables import DeliveryStatus
from tests.cli.test_cli_ops import shell
from tests.redis_space import RedisSpace

SECRET = "doctor-test-secret-0123456789"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
RULE = """id: low-stock
on: item.low_stock
actions:
  - type: log
    message: "{{ data.name }} is low"
"""


def _settings(tmp_path: Path, **env: str) -> Settings:
    rules = tmp_path / "rules"
    if not rules.exists():
        rules.mkdir()
        (rules / "low-stock.yaml").write_text(RULE)
    base = {
        "STOCKAJ_WEBHOOK_SECRET": SECRET,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'store.db'}",
        "RULES_DIR": str(rules),
    }
    return load_settings({**base, **env})


async def _migrated(url: str) -> Store:
    engine = database.create_engine(url)
    await database.upgrade(engine)
    return Store(engine)


async def _receive(store: Store, delivery_id: str, event: str, at: datetime) -> None:
    await store.add_deliveries(
        [NewDelivery(delivery_id=delivery_id, event=event, headers={}, body=b"{}", received_at=at)], at
    )


def _by_check(findings: list[Finding], check: str) -> list[Finding]:
    return [finding for finding in findings if finding.check == check]


async def _healthy_store(settings: Settings) -> Store:
    store = await _migrated(settings.database_url)
    await _receive(store, "dlv-1", "item.low_stock", NOW - timedelta(minutes=5))
    async with store.engine.begin() as connection:
        from engine.store.tables import deliveries

        await connection.execute(deliveries.update().values(status=DeliveryStatus.DONE, due_at=None))
    await store.beat(process_id="serve@test", role="serve", started_at=NOW, now=NOW - timedelta(seconds=3))
    return store


async def test_a_healthy_embedded_engine_has_no_problem(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = await _healthy_store(settings)
    await store.close()
    findings = await examine(settings, Masker([SECRET]), now=NOW)
    assert healthy(findings), findings
    assert {f.check for f in findings} >= {"settings", "rules", "database", "receivers", "received", "lag"}
    received = _by_check(findings, "received")[0]
    assert "dlv-1 (item.low_stock)" in received.summary
    assert "5 min ago" in received.summary


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"STOCKAJ_WEBHOOK_SECRET": ""}, "STOCKAJ_WEBHOOK_SECRET is not set"),
        ({"STOCKAJ_WEBHOOK_SECRET": SECRET + "\n"}, "has a trailing line break"),
        ({"STOCKAJ_WEBHOOK_SECRET": " " + SECRET}, "has a space at its start or end"),
        ({"STOCKAJ_WEBHOOK_SECRET": DEVELOPMENT_SECRET, "HOST": "0.0.0.0"}, "the development secret is used"),
    ],
    ids=["unset", "trailing-newline", "leading-space", "development-secret-reachable"],
)
async def test_each_broken_setting_is_a_problem_with_its_fix(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    settings = _settings(tmp_path, **env)
    findings = await examine(settings, Masker([SECRET]), now=NOW)
    problems = [f for f in _by_check(findings, "settings") if f.severity is Severity.PROBLEM]
    assert [expected in f.summary for f in problems] == [True], problems
    assert problems[0].fix
    assert not healthy(findings)


async def test_the_development_secret_on_loopback_is_fine(tmp_path: Path) -> None:
    settings = _settings(tmp_path, STOCKAJ_WEBHOOK_SECRET=DEVELOPMENT_SECRET, HOST="127.0.0.1")
    findings = await examine(settings, Masker(), now=NOW)
    assert [f.severity for f in _by_check(findings, "settings")] == [Severity.OK]


async def test_a_previous_secret_past_its_end_is_a_note(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        STOCKAJ_WEBHOOK_SECRET_PREVIOUS="doctor-previous-secret-000",
        STOCKAJ_WEBHOOK_ROTATION_ENDS_AT="2026-12-01T00:00:00Z",
    )
    findings = _by_check(await examine(settings, Masker(), now=NOW), "settings")
    assert [(f.severity, "refused since 2026-12-01" in f.summary) for f in findings] == [
        (Severity.NOTE, True)
    ]


async def test_a_broken_rule_file_is_a_problem_naming_its_place(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    (settings.rules_dir / "broken.yaml").write_text("id: broken\non: item.low_stock\nactions: []\n")
    rules = _by_check(await examine(settings, Masker(), now=NOW), "rules")
    assert rules[0].severity is Severity.PROBLEM
    assert "broken.yaml:" in rules[0].summary
    assert rules[0].fix
    assert "stockaj-rules check" in rules[0].fix


async def test_a_database_not_migrated_is_a_problem(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    (tmp_path / "store.db").write_bytes(b"")
    database_findings = _by_check(await examine(settings, Masker(), now=NOW), "database")
    assert database_findings[0].severity is Severity.PROBLEM
    assert database_findings[0].fix == "run stockaj-rules db upgrade"


@pytest.mark.postgres
async def test_a_missing_postgresql_database_names_createdb(tmp_path: Path, postgres_url: str) -> None:
    base, _, _ = postgres_url.rpartition("/")
    settings = _settings(tmp_path, DATABASE_URL=f"{base}/stockaj_doctor_absent_db")
    finding = _by_check(await examine(settings, Masker(), now=NOW), "database")[0]
    assert finding.severity is Severity.PROBLEM
    assert finding.summary == "the PostgreSQL database stockaj_doctor_absent_db does not exist"
    assert finding.fix
    assert "createdb stockaj_doctor_absent_db" in finding.fix


@pytest.mark.postgres
async def test_findings_read_from_postgresql_too(tmp_path: Path, fresh_postgres_url: str) -> None:
    settings = _settings(tmp_path, DATABASE_URL=fresh_postgres_url)
    store = await _healthy_store(settings)
    await store.record_signature_failures({(NOW - timedelta(minutes=2), "hmac_sha1"): 4})
    await store.close()
    findings = await examine(settings, Masker(), now=NOW)
    signatures = _by_check(findings, "signatures")
    assert [(f.severity, f.summary) for f in signatures] == [
        (Severity.PROBLEM, "4 delivery(ies) refused in the last hour: hmac_sha1")
    ]
    assert _by_check(findings, "received")[0].severity is Severity.OK


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_redis_unreachable_is_a_problem(tmp_path: Path) -> None:
    settings = _settings(tmp_path, REDIS_URL=f"redis://127.0.0.1:{_closed_port()}/0")
    queue = _by_check(await examine(settings, Masker(), now=NOW), "queue")
    assert queue[0].severity is Severity.PROBLEM
    assert "REDIS_URL cannot be reached" in queue[0].summary


@pytest.mark.redis
async def test_with_redis_and_no_worker_alive_is_a_problem_and_a_beating_worker_is_fine(
    tmp_path: Path, redis_space: RedisSpace
) -> None:
    settings = _settings(tmp_path, **redis_space.environment())
    store = await _healthy_store(settings)
    findings = await examine(settings, Masker(), now=NOW)
    assert _by_check(findings, "queue")[0].severity is Severity.OK
    workers = _by_check(findings, "workers")[0]
    assert workers.severity is Severity.PROBLEM
    assert workers.fix
    assert "stockaj-rules worker" in workers.fix
    await store.beat(process_id="worker@a", role="worker", started_at=NOW, now=NOW - timedelta(seconds=5))
    await store.beat(process_id="worker@b", role="worker", started_at=NOW, now=NOW - timedelta(minutes=5))
    await store.close()
    workers = _by_check(await examine(settings, Masker(), now=NOW), "workers")[0]
    assert (workers.severity, workers.summary) == (Severity.OK, "1 worker(s) alive")


async def test_nothing_received_and_events_never_received_are_notes(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = await _migrated(settings.database_url)
    await store.close()
    findings = await examine(settings, Masker(), now=NOW)
    received = _by_check(findings, "received")[0]
    assert (received.severity, received.summary) == (Severity.NOTE, "no delivery received yet")
    events = _by_check(findings, "events")
    assert [f.summary for f in events] == ["rules wait for item.low_stock, and none arrived in the last day"]
    assert healthy(findings)


async def test_signature_failures_failed_deliveries_and_lag_are_problems(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = await _migrated(settings.database_url)
    await _receive(store, "dlv-waiting", "item.low_stock", NOW - timedelta(minutes=30))
    await _receive(store, "dlv-failed", "item.low_stock", NOW - timedelta(minutes=40))
    async with store.engine.begin() as connection:
        from engine.store.tables import deliveries

        await connection.execute(
            deliveries.update()
            .where(deliveries.c.delivery_id == "dlv-failed")
            .values(status=DeliveryStatus.FAILED, updated_at=NOW - timedelta(minutes=39), due_at=None)
        )
    tally = SignatureFailureTally()
    for _ in range(3):
        tally.add("secret_whitespace", NOW - timedelta(minutes=10))
    tally.add("unknown_secret", NOW - timedelta(hours=2))  # outside the last hour
    await store.record_signature_failures(tally.take())
    await store.close()
    findings = await examine(settings, Masker(), now=NOW)
    assert [f.summary for f in _by_check(findings, "signatures")] == [
        "3 delivery(ies) refused in the last hour: secret_whitespace"
    ]
    assert _by_check(findings, "failed")[0].summary == "1 delivery(ies) failed in the last day"
    lag = _by_check(findings, "lag")[0]
    assert (lag.severity, lag.summary) == (Severity.PROBLEM, "the oldest pending delivery has waited 30 min")
    assert not healthy(findings)


async def test_a_running_process_beats_and_writes_its_tally(tmp_path: Path) -> None:
    import asyncio

    store = await _migrated(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    tally = SignatureFailureTally()
    tally.add("base64_digest")
    task = asyncio.create_task(record_health(store, "worker", tally, interval=0.05))
    await asyncio.sleep(0.3)
    tally.add("base64_digest")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    beats = await store.heartbeats()
    failures = await store.signature_failures_since(datetime.now(UTC) - timedelta(minutes=5))
    await store.close()
    assert [beat.role for beat in beats] == ["worker"]
    assert failures == {"base64_digest": 2}  # the second one by the last write, when stopping


def test_doctor_as_a_new_user_runs_it_exit_codes_and_json(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "low-stock.yaml").write_text(RULE)
    env = {"STOCKAJ_WEBHOOK_SECRET": SECRET, "RULES_DIR": str(rules)}
    fresh = shell("doctor", env=env, cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "no database yet at stockaj-rules.db" in fresh.stdout
    assert fresh.stdout.strip().endswith("healthy")
    broken = shell("doctor", "--json", env={**env, "STOCKAJ_WEBHOOK_SECRET": SECRET + " "}, cwd=tmp_path)
    assert broken.returncode == 1
    answer = json.loads(broken.stdout)
    assert answer["healthy"] is False
    assert answer["findings"][0] == {
        "check": "settings",
        "severity": "problem",
        "summary": "STOCKAJ_WEBHOOK_SECRET has a space at its start or end: Stockaj signs without it",
        "fix": "set STOCKAJ_WEBHOOK_SECRET again without the surrounding space or line break",
    }
    assert SECRET not in broken.stdout + broken.stderr
    unusable = shell("doctor", env={**env, "PORT": "http"}, cwd=tmp_path)
    assert unusable.returncode == 1
    assert "PORT" in unusable.stdout
    assert "Traceback" not in unusable.stdout + unusable.stderr


def test_scripts_run_uses_the_development_secret_doctor_knows() -> None:
    script = (Path(__file__).parents[2] / "scripts" / "run").read_text()
    assert f"STOCKAJ_WEBHOOK_SECRET={DEVELOPMENT_SECRET}" in script
