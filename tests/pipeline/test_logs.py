"""Logs (spec sections 6 and 10): JSON lines or console lines, one line per delivery outcome,
and never a secret value, wherever in a record it hides.

Records go through `engine.pipeline.logs.configure_logging` and the standard `logging`
calls every module makes; the masker is the one the running service builds
from the settings (`engine.pipeline.service.masker_for`).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy.ext.asyncio import create_async_engine

from actions.base import DatabaseEngines
from actions.registry import load_registry
from engine.config import load_settings
from engine.config_plugins import PluginSettings
from engine.language.loader import load_rules
from engine.pipeline.logs import configure_logging
from engine.pipeline.metrics import Metrics
from engine.pipeline.retry import RetryPolicy
from engine.pipeline.service import masker_for
from engine.pipeline.worker import DeliveryProcessor
from engine.secrets import Masker
from engine.store import NewDelivery
from engine.testing import migrated_store

CRM_TOKEN = "crm-t0ken-5ecret-88"

RULES = """\
- id: reorder
  on: item.low_stock
  actions:
    - type: http
      url: https://crm.example.com/orders
      headers: {Authorization: "Bearer {{ secrets.CRM_TOKEN }}"}
      json: {sku: "{{ data.external_id }}"}
- id: rentals
  on: rent.created
  actions: [{type: log, message: "rental {{ data.id }}"}]
"""


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access = logging.getLogger("uvicorn.access").disabled
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = access


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_format_writes_one_json_object_per_record_with_its_extra_fields() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", Masker(), stream)

    logging.getLogger("engine.test").info(
        "delivery %s", "done", extra={"delivery_id": "d-1", "fired": ["reorder"]}
    )
    logging.getLogger("engine.test").warning("second")

    first, second = json_lines(stream)
    assert first["event"] == "delivery done"
    assert (first["level"], first["logger"]) == ("info", "engine.test")
    assert (first["delivery_id"], first["fired"]) == ("d-1", ["reorder"])
    assert first["timestamp"].endswith("Z")
    assert (second["event"], second["level"]) == ("second", "warning")


def test_console_format_writes_readable_lines_not_json() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "console", Masker([CRM_TOKEN]), stream)

    logging.getLogger("engine.test").info("hello %s", CRM_TOKEN, extra={"delivery_id": "d-2"})

    [line] = stream.getvalue().splitlines()
    assert "hello ***" in line
    assert "delivery_id=d-2" in line
    assert not line.startswith("{")
    assert "\x1b[" not in line  # no colours when the stream is not a terminal


def test_log_level_drops_lower_records_and_access_logs_are_off() -> None:
    stream = io.StringIO()
    configure_logging("WARNING", "json", Masker(), stream)

    logging.getLogger("engine.test").info("quiet")
    logging.getLogger("uvicorn.access").warning("GET /healthz 200")
    logging.getLogger("engine.test").error("loud")

    assert [line["event"] for line in json_lines(stream)] == ["loud"]


def test_libraries_chatter_at_info_is_left_out_and_their_warnings_pass() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", Masker(), stream)

    logging.getLogger("alembic.runtime.migration").info("Context impl PostgresqlImpl.")
    logging.getLogger("httpx").info('HTTP Request: POST https://crm.example.com "HTTP/1.1 201"')
    logging.getLogger("alembic.runtime.migration").warning("a migration warning")
    logging.getLogger("engine.test").info("ours")

    assert [line["event"] for line in json_lines(stream)] == ["a migration warning", "ours"]


def arq_job_lines(level: str) -> list[str]:
    """What arq's worker logs around one job and one retry, through `configure_logging` at `level`."""
    stream = io.StringIO()
    configure_logging(level, "json", Masker(), stream)
    arq = logging.getLogger("arq.worker")
    arq.info("%6.2fs \u2192 %s(%s)%s", 0.01, "d-1:process_delivery", "'d-1'", "")
    arq.info("%6.2fs \u21bb %s retrying job in %0.2fs", 0.02, "d-1:process_delivery", 2.0)
    arq.info("%6.2fs \u2190 %s \u25cf %s", 0.03, "d-1:process_delivery", "")
    arq.warning("job %s expired", "d-2")
    return [line["event"] for line in json_lines(stream)]


def test_arqs_lines_per_job_are_left_out_below_debug_and_the_rest_of_arq_passes() -> None:
    assert arq_job_lines("INFO") == [
        "  0.02s \u21bb d-1:process_delivery retrying job in 2.00s",
        "job d-2 expired",
    ]
    assert arq_job_lines("DEBUG") == [
        "  0.01s \u2192 d-1:process_delivery('d-1')",
        "  0.02s \u21bb d-1:process_delivery retrying job in 2.00s",
        "  0.03s \u2190 d-1:process_delivery \u25cf ",
        "job d-2 expired",
    ]


SENSITIVE = {
    "secret variable": ({"SECRET_CRM_TOKEN": CRM_TOKEN}, [CRM_TOKEN]),
    "webhook secret": ({"STOCKAJ_WEBHOOK_SECRET": "whsec-l0g-5ecret"}, ["whsec-l0g-5ecret"]),
    "previous webhook secret": (
        {"STOCKAJ_WEBHOOK_SECRET_PREVIOUS": "whsec-0ld-5ecret"},
        ["whsec-0ld-5ecret"],
    ),
    "database password": (
        {"DATABASE_URL": "postgresql+asyncpg://app:p%40ss-w0rd@db/app"},
        ["p@ss-w0rd", "p%40ss-w0rd"],
    ),
    "slack webhook url": (
        {"SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0001/B0001/XXXXXXXXXXXX"},
        ["https://hooks.slack.com/services/T0001/B0001/XXXXXXXXXXXX", "services/T0001/B0001/XXXXXXXXXXXX"],
    ),
    "purchase order token": ({"PURCHASE_ORDER_TOKEN": "po-l0g-t0ken"}, ["po-l0g-t0ken"]),
    "redis password": ({"REDIS_URL": "redis://:r3dis-pa55@cache:6379/0"}, ["r3dis-pa55"]),
}


class UpstreamError(Exception):
    pass


@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.parametrize(("variables", "values"), list(SENSITIVE.values()), ids=list(SENSITIVE))
def test_secret_values_never_reach_the_log_wherever_they_hide(
    variables: dict[str, str], values: list[str], fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    stream = io.StringIO()
    configure_logging("DEBUG", fmt, masker_for(load_settings(variables)), stream)
    log = logging.getLogger("engine.test")

    for value in values:
        log.info("message %s", value)
        log.info(f"formatted {value}", extra={"url": value, "nested": {"list": [value]}})
        log.warning("an object", extra={"error": UpstreamError(f"refused {value}")})
        try:
            try:
                raise UpstreamError(f"upstream said {value}")
            except UpstreamError as cause:
                raise RuntimeError(f"while calling with {value}") from cause
        except RuntimeError:
            log.exception("it failed")

    output = stream.getvalue()
    for value in values:
        assert value not in output
    assert output.count("***") >= 6 * len(values)
    assert "Traceback (most recent call last)" in output  # the traceback is kept, masked


async def test_a_delivery_outcome_is_one_json_line_carrying_its_delivery_id_and_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_CRM_TOKEN", CRM_TOKEN)
    stream = io.StringIO()
    configure_logging("INFO", "json", masker_for(load_settings({})), stream)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.yaml").write_text(RULES)
    rule_set = load_rules(tmp_path / "rules", load_registry())
    async with migrated_store(tmp_path) as store, httpx.AsyncClient() as http, respx.mock() as mock:
        for delivery_id, event in (("low-1", "item.low_stock"), ("updated-1", "item.updated")):
            body = json.dumps({"event": event, "data": {"external_id": "TENT-4P"}}).encode()
            await store.add_deliveries([NewDelivery(delivery_id, event, {}, body, _now())], due_at=_now())
        # The CRM's client library puts the token in its error message: it must not reach the log.
        mock.post("https://crm.example.com/orders").mock(side_effect=UpstreamError(f"rejected {CRM_TOKEN}"))
        processor = DeliveryProcessor(
            store=store,
            rules=lambda: rule_set,
            http=http,
            databases=DatabaseEngines(lambda url: create_async_engine(url)),
            action_settings=PluginSettings(),
            secrets={"CRM_TOKEN": CRM_TOKEN},
            masker=masker_for(load_settings({})),
            metrics=Metrics(),
            retry=RetryPolicy(max_attempts=1),
            requeue_after=timedelta(seconds=60),
        )
        await processor.process("low-1")
        await processor.process("updated-1")

    lines = json_lines(stream)
    outcomes = [line for line in lines if "status" in line and "delivery_id" in line]
    assert [(line["delivery_id"], line["status"]) for line in outcomes] == [
        ("low-1", "failed"),
        ("updated-1", "no_match"),
    ]
    assert CRM_TOKEN not in stream.getvalue()
    assert any("rejected ***" in json.dumps(line) for line in lines)


def _now() -> datetime:
    return datetime.now(UTC)
