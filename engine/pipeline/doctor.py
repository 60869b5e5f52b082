"""`stockaj-rules doctor`: the integration guide's checklist, worked through from this side.

Each check gives a `Finding`: what was seen, how bad it is, and the fix. The checks, in
the order people work through them when "nothing happens":

    settings     the webhook secret is set, has no surrounding whitespace, is not the
                 development secret on an address other machines reach
    rules        the rules folder loads
    database     reachable and migrated
    queue        Redis reachable (REDIS_URL set), workers alive (their heartbeats)
    received     the last delivery, and from which event
    events       deliveries per event over the last day; events that rules wait for and
                 that never came (the events list of Stockaj's webhook)
    signatures   refused signatures in the last hour, by reason, with the fix
    failed       failed deliveries of the last day, waiting for a fix and a redelivery
    lag          how long the oldest pending delivery has waited

Every text is masked before it leaves (a database URL's password, the secrets).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from actions.registry import load_registry
from engine.config import Settings
from engine.errors import SourceErrors
from engine.language.loader import load_rules
from engine.language.rules import RuleSet
from engine.pipeline.health_records import HEARTBEAT_SECONDS
from engine.secrets import Masker
from engine.signature_diagnosis import FIXES
from engine.store import Store, database
from engine.store.tables import DeliveryStatus

DEVELOPMENT_SECRET = "dev-secret-not-for-production"  # scripts/run's, for 127.0.0.1 only
ALIVE_WITHIN = timedelta(seconds=3 * HEARTBEAT_SECONDS)
PROBE_SECONDS = 5.0
QUIET_AFTER = timedelta(days=1)


class Severity(StrEnum):
    OK = "ok"
    NOTE = "note"  # worth knowing, not wrong
    PROBLEM = "problem"


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    check: str
    severity: Severity
    summary: str
    fix: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {key: str(value) if key == "severity" else value for key, value in asdict(self).items()}


def healthy(findings: list[Finding]) -> bool:
    return all(finding.severity is not Severity.PROBLEM for finding in findings)


async def examine(settings: Settings, masker: Masker, now: datetime | None = None) -> list[Finding]:
    """Every check, in the checklist's order; the store's only when the database answers."""
    moment = now or datetime.now(UTC)
    findings = settings_findings(settings, moment)
    rules, rule_findings = rules_finding(settings.rules_dir)
    findings += rule_findings
    store, database_findings = await open_checked_store(settings)
    findings += database_findings
    if settings.redis_url:
        findings.append(await redis_finding(settings.redis_url))
    if store is not None:
        try:
            findings += await store_findings(store, settings, rules, moment)
        finally:
            await store.close()
    return [
        Finding(
            check=f.check,
            severity=f.severity,
            summary=masker.mask(f.summary),
            fix=masker.mask(f.fix) if f.fix else None,
        )
        for f in findings
    ]


def settings_findings(settings: Settings, now: datetime) -> list[Finding]:
    secret, previous = settings.stockaj_webhook_secret, settings.stockaj_webhook_secret_previous
    if not secret:
        return [
            Finding(
                check="settings",
                severity=Severity.PROBLEM,
                summary="STOCKAJ_WEBHOOK_SECRET is not set: serve refuses to start",
                fix="set it to the secret in Stockaj's webhook settings",
            )
        ]
    findings = []
    for name, value in (("STOCKAJ_WEBHOOK_SECRET", secret), ("STOCKAJ_WEBHOOK_SECRET_PREVIOUS", previous)):
        if value and value != value.strip():
            findings.append(
                Finding(
                    check="settings",
                    severity=Severity.PROBLEM,
                    summary=f"{name} has {_whitespace_kind(value)}: Stockaj signs without it",
                    fix=f"set {name} again without the surrounding space or line break",
                )
            )
    if secret == DEVELOPMENT_SECRET and not _loopback(settings.host):
        findings.append(
            Finding(
                check="settings",
                severity=Severity.PROBLEM,
                summary=f"the development secret is used on HOST={settings.host}, which other machines reach",
                fix="set STOCKAJ_WEBHOOK_SECRET to the secret configured in Stockaj",
            )
        )
    until = settings.stockaj_webhook_rotation_ends_at
    if previous and until is not None and until <= now:
        findings.append(
            Finding(
                check="settings",
                severity=Severity.NOTE,
                summary=f"STOCKAJ_WEBHOOK_SECRET_PREVIOUS is refused since {until.isoformat()}",
                fix="the rotation is over: remove STOCKAJ_WEBHOOK_SECRET_PREVIOUS "
                "and STOCKAJ_WEBHOOK_ROTATION_ENDS_AT",
            )
        )
    if not findings:
        findings.append(Finding(check="settings", severity=Severity.OK, summary="the webhook secret is set"))
    return findings


def rules_finding(rules_dir: Path) -> tuple[RuleSet | None, list[Finding]]:
    try:
        rules = load_rules(rules_dir, load_registry())
    except SourceErrors as exc:
        first = exc.problems[0] if exc.problems else None
        summary = f"{len(exc.problems)} problem(s) in the rules under {rules_dir}"
        return None, [
            Finding(
                check="rules",
                severity=Severity.PROBLEM,
                summary=f"{summary}; the first: {first}" if first else summary,
                fix=f"stockaj-rules check {rules_dir} lists them all "
                "(a running engine keeps its last good rules meanwhile)",
            )
        ]
    if not rules.rules:
        return rules, [
            Finding(
                check="rules",
                severity=Severity.NOTE,
                summary=f"no rules under {rules_dir}: every delivery is stored and nothing else happens",
                fix="add rule files there (docs/rules.md), or set RULES_DIR",
            )
        ]
    summary = f"{len(rules)} rule(s) in {len(rules.files)} file(s) under {rules_dir} load"
    return rules, [Finding(check="rules", severity=Severity.OK, summary=summary)]


async def open_checked_store(settings: Settings) -> tuple[Store | None, list[Finding]]:
    """The store when it answers and is migrated, with what was found either way."""
    url = settings.database_url
    if database.is_sqlite(url):
        path = make_url(url).database
        if path and path != ":memory:" and not await asyncio.to_thread(Path(path).exists):
            return None, [
                Finding(
                    check="database",
                    severity=Severity.NOTE,
                    summary=f"no database yet at {path}: serve creates it when it starts",
                    fix="start stockaj-rules serve (or check DATABASE_URL and the working folder)",
                )
            ]
    engine = database.create_engine(url)
    try:
        current = await asyncio.wait_for(database.schema_is_current(engine), PROBE_SECONDS)
    except Exception as exc:
        await engine.dispose()
        return None, [_database_unreachable(url, exc)]
    if not current:
        await engine.dispose()
        return None, [
            Finding(
                check="database",
                severity=Severity.PROBLEM,
                summary="the database schema is not up to date: serve and worker refuse to start",
                fix="run stockaj-rules db upgrade",
            )
        ]
    return Store(engine), [Finding(check="database", severity=Severity.OK, summary="reachable and migrated")]


def _database_unreachable(url: str, exc: BaseException) -> Finding:
    name = make_url(url).database or ""
    text = str(exc)
    if f'database "{name}" does not exist' in text:
        return Finding(
            check="database",
            severity=Severity.PROBLEM,
            summary=f"the PostgreSQL database {name} does not exist",
            fix=f"create it (createdb {name}), then run stockaj-rules db upgrade",
        )
    reason = "no answer within 5 s" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {text}"
    return Finding(
        check="database",
        severity=Severity.PROBLEM,
        summary=f"DATABASE_URL cannot be reached ({reason.splitlines()[0][:300]})",
        fix="check DATABASE_URL, that the database server runs and that this machine may connect",
    )


async def redis_finding(redis_url: str) -> Finding:
    import redis.asyncio as aioredis  # only when a queue is configured

    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=PROBE_SECONDS)
    try:
        await asyncio.wait_for(client.ping(), PROBE_SECONDS)
    except Exception as exc:
        return Finding(
            check="queue",
            severity=Severity.PROBLEM,
            summary=f"REDIS_URL cannot be reached ({type(exc).__name__}): deliveries wait unprocessed",
            fix="start Redis or fix REDIS_URL; stored deliveries are enqueued again once it answers",
        )
    finally:
        await client.aclose()
    return Finding(check="queue", severity=Severity.OK, summary="Redis answers")


async def store_findings(
    store: Store, settings: Settings, rules: RuleSet | None, now: datetime
) -> list[Finding]:
    checks: list[Callable[[], Awaitable[list[Finding]]]] = [
        lambda: _processes(store, settings, now),
        lambda: _received(store, now),
        lambda: _events(store, rules, now),
        lambda: _signatures(store, now),
        lambda: _failed(store, now),
        lambda: _lag(store, settings, now),
    ]
    findings: list[Finding] = []
    for check in checks:
        findings += await check()
    return findings


async def _processes(store: Store, settings: Settings, now: datetime) -> list[Finding]:
    alive = [beat for beat in await store.heartbeats() if now - beat.seen_at <= ALIVE_WITHIN]
    workers = [beat for beat in alive if beat.role == "worker"]
    receivers = [beat for beat in alive if beat.role == "serve"]
    findings = []
    if settings.redis_url:
        if workers:
            findings.append(
                Finding(check="workers", severity=Severity.OK, summary=f"{len(workers)} worker(s) alive")
            )
        else:
            findings.append(
                Finding(
                    check="workers",
                    severity=Severity.PROBLEM,
                    summary=f"no worker seen in the last {ALIVE_WITHIN.seconds} s: nothing runs the rules",
                    fix="start stockaj-rules worker (one per core), with the same settings as serve",
                )
            )
    if receivers:
        findings.append(
            Finding(check="receivers", severity=Severity.OK, summary=f"{len(receivers)} serve process(es) up")
        )
    else:
        findings.append(
            Finding(
                check="receivers",
                severity=Severity.NOTE,
                summary=f"no serve process seen in the last {ALIVE_WITHIN.seconds} s, with this DATABASE_URL",
                fix="start stockaj-rules serve (or run doctor with the same settings as serve)",
            )
        )
    return findings


async def _received(store: Store, now: datetime) -> list[Finding]:
    last = await store.last_delivery()
    if last is None:
        return [
            Finding(
                check="received",
                severity=Severity.NOTE,
                summary="no delivery received yet",
                fix="in Stockaj's webhook settings: the webhook is active, its URL reaches this engine "
                "(…/webhooks/stockaj), then press Send Test",
            )
        ]
    ago = _ago(now - last.received_at)
    summary = f"the last delivery, {last.delivery_id} ({last.event}), arrived {ago} ago"
    if now - last.received_at > QUIET_AFTER:
        fix = "if Stockaj had events since: check the webhook is active and its URL reaches this engine"
        return [Finding(check="received", severity=Severity.NOTE, summary=summary, fix=fix)]
    return [Finding(check="received", severity=Severity.OK, summary=summary)]


async def _events(store: Store, rules: RuleSet | None, now: datetime) -> list[Finding]:
    counts = await store.received_per_event(now - QUIET_AFTER)
    findings = []
    if counts:
        listed = ", ".join(f"{event} {n}" for event, n in counts.items())
        findings.append(Finding(check="events", severity=Severity.OK, summary=f"the last day: {listed}"))
    awaited = sorted(
        {
            pattern
            for rule in (rules.rules if rules else ())
            if rule.enabled
            for pattern in rule.events
            if "*" not in pattern and not pattern.startswith("stockaj_rules.")
        }
    )
    missing = [event for event in awaited if event not in counts]
    if missing:
        findings.append(
            Finding(
                check="events",
                severity=Severity.NOTE,
                summary=f"rules wait for {', '.join(missing)}, and none arrived in the last day",
                fix="in Stockaj's webhook settings, check that the events list includes them",
            )
        )
    return findings


async def _signatures(store: Store, now: datetime) -> list[Finding]:
    failures = await store.signature_failures_since(now - timedelta(hours=1))
    if not failures:
        summary = "no signature refused in the last hour"
        return [Finding(check="signatures", severity=Severity.OK, summary=summary)]
    return [
        Finding(
            check="signatures",
            severity=Severity.PROBLEM,
            summary=f"{n} delivery(ies) refused in the last hour: {reason}",
            fix=FIXES.get(reason, "see docs/operations.md, Signature failures"),
        )
        for reason, n in failures.items()
    ]


async def _failed(store: Store, now: datetime) -> list[Finding]:
    failed = await store.count_with_status(DeliveryStatus.FAILED, since=now - QUIET_AFTER)
    if not failed:
        return [Finding(check="failed", severity=Severity.OK, summary="no delivery failed in the last day")]
    return [
        Finding(
            check="failed",
            severity=Severity.PROBLEM,
            summary=f"{failed} delivery(ies) failed in the last day",
            fix="stockaj-rules deliveries list --status failed shows them; fix the cause, then "
            "stockaj-rules redeliver ID",
        )
    ]


async def _lag(store: Store, settings: Settings, now: datetime) -> list[Finding]:
    oldest = await store.oldest_pending_received_at()
    waited = max(timedelta(0), now - oldest) if oldest else timedelta(0)
    allowed = timedelta(seconds=max(60.0, 2 * settings.requeue_after_seconds))
    if waited <= allowed:
        return [Finding(check="lag", severity=Severity.OK, summary=f"the queue's lag is {_ago(waited)}")]
    return [
        Finding(
            check="lag",
            severity=Severity.PROBLEM,
            summary=f"the oldest pending delivery has waited {_ago(waited)}",
            fix="workers are down or too few: start more stockaj-rules worker processes",
        )
    ]


def _ago(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172_800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86_400} days"


def _whitespace_kind(value: str) -> str:
    if value.endswith(("\n", "\r")):
        return "a trailing line break"
    return "a space at its start or end"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
