"""The delivery log (`/`) and one delivery's whole story (`/deliveries/ID`), with its actions.

Everything a delivery holds (ids, events, headers, the body, reasons quoting payload values,
rendered params, errors) reaches the page as text through autoescaped templates, masked; the
raw body is only ever a `text/plain` download.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from quart import Blueprint, Response, abort, redirect, render_template, request, url_for

from engine.console.app import parts, session
from engine.console.chart import day_chart
from engine.language.delivery import Delivery
from engine.language.fixtures import fixture_document
from engine.language.matching import RuleStatus
from engine.store import StoredDelivery
from engine.store.log_pages import MAX_PAGE, LogFilter, log_page, per_minute
from engine.store.tables import PENDING_STATUSES, DeliveryStatus

pages = Blueprint("deliveries", __name__)

PAGE_SIZE = 50
MAX_FILTER_CHARS = 200


def _filter() -> LogFilter:
    def arg(name: str) -> str | None:
        value = request.args.get(name, "").strip()[:MAX_FILTER_CHARS]
        return value or None

    status = arg("status")
    if status is not None and status not in {s.value for s in DeliveryStatus}:
        status = None
    return LogFilter(status=status, event=arg("event"), rule=arg("rule"), delivery_id=arg("id"))


def _cursor() -> tuple[datetime, str] | None:
    moment, delivery_id = request.args.get("before_at"), request.args.get("before_id")
    if not moment or delivery_id is None:
        return None
    try:
        when = datetime.fromisoformat(moment)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)), delivery_id


@pages.get("/")
async def delivery_log() -> Any:
    console = parts()
    chosen, before = _filter(), _cursor()
    size = request.args.get("size", PAGE_SIZE, type=int) or PAGE_SIZE
    page = await log_page(console.store, chosen, before, size)
    filters: dict[str, Any] = {k: v for k, v in vars_of(chosen).items() if v}
    if size != PAGE_SIZE:
        filters["size"] = max(1, min(size, MAX_PAGE))
    older = (
        url_for(
            ".delivery_log", **filters, before_at=page.next_key[0].isoformat(), before_id=page.next_key[1]
        )
        if page.next_key
        else None
    )
    context = {
        "rows": page.rows,
        "filter": chosen,
        "filters": filters,
        "older": older,
        "first_page": before is None,
        "statuses": [s.value for s in DeliveryStatus],
        "rules": console.rules.current.ids(),
        "refresh_url": url_for(".delivery_log", **filters, partial="rows"),
    }
    if request.args.get("partial") == "rows":
        return await render_template("_log_rows.html", **context)
    return await render_template("log.html", **context)


@pages.get("/chart")
async def chart() -> Any:
    now = datetime.now(UTC)
    counts = await per_minute(parts().store, now - timedelta(hours=24))
    return await render_template("_chart.html", chart=day_chart(counts, now))


def vars_of(chosen: LogFilter) -> dict[str, str | None]:
    return {"status": chosen.status, "event": chosen.event, "rule": chosen.rule, "id": chosen.delivery_id}


@pages.get("/deliveries/<path:delivery_id>")
async def delivery(delivery_id: str) -> Any:
    story = await _story(delivery_id)
    flash, session().flash = session().flash, None
    template = "_story.html" if request.args.get("partial") == "story" else "delivery.html"
    return await render_template(template, flash=flash, **story)


async def _story(delivery_id: str) -> dict[str, Any]:
    console = parts()
    stored = await console.store.get(delivery_id)
    if stored is None:
        abort(404, f"no delivery {delivery_id!r} in the store")
    masker = console.masker
    outcomes = await console.store.outcomes(delivery_id)
    runs = await console.store.action_runs(delivery_id)
    by_rule: dict[str, list[Any]] = {}
    for (rule_id, _index), run in sorted(runs.items()):
        by_rule.setdefault(rule_id, []).append(run)
    return {
        "stored": stored,
        "pending": stored.status in PENDING_STATUSES,
        "error": masker.mask(stored.error) if stored.error else None,
        "headers": [(name, masker.mask(value)) for name, value in sorted(stored.headers.items())],
        "body": masker.mask(_pretty(stored.body)) if stored.body is not None else None,
        "outcomes": [(o, masker.mask(o.reason)) for o in outcomes],
        "runs": {
            rule_id: [
                (run, _shown_params(masker.mask(run.params)), masker.mask(run.last_error)) for run in rules
            ]
            for rule_id, rules in by_rule.items()
        },
        "fired_status": RuleStatus.FIRED.value,
    }


def _pretty(body: bytes) -> str:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return body.decode("utf-8", errors="replace")


def _shown_params(params: Any) -> str:
    return json.dumps(params, indent=2, ensure_ascii=False)


@pages.get("/raw/<path:delivery_id>")
async def raw_body(delivery_id: str) -> Response:
    """The body exactly as received, as a text download: never rendered by the browser."""
    stored = await parts().store.get(delivery_id)
    if stored is None or stored.body is None:
        abort(404, "no such delivery, or its body was dropped by retention")
    return Response(
        stored.body,
        content_type="text/plain; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{_file_name(stored)}.txt"'},
    )


@pages.get("/fixture/<path:delivery_id>")
async def export_fixture(delivery_id: str) -> Response:
    """The delivery as a fixture, with the verdicts the log recorded as its expectations."""
    console = parts()
    stored = await console.store.get(delivery_id)
    if stored is None or stored.body is None:
        abort(404, "no such delivery, or its body was dropped by retention")
    try:
        payload = json.loads(stored.body)
    except (ValueError, RecursionError):
        abort(409, "the stored body is not JSON: it cannot become a fixture")
    fixture = fixture_document(
        Delivery(stored.event, stored.delivery_id, payload), f"{stored.event} {stored.delivery_id}"
    )
    outcomes = await console.store.outcomes(delivery_id)
    fixture["expect"] = {
        "fired": [o.rule_id for o in outcomes if o.status == RuleStatus.FIRED],
        # A throttled rule fires in a dry run (its throttle is empty): expect nothing of it.
        "not_fired": [
            o.rule_id for o in outcomes if o.status not in (RuleStatus.FIRED, RuleStatus.THROTTLED)
        ],
    }
    text = json.dumps(console.masker.mask(fixture), indent=2, ensure_ascii=False) + "\n"
    return Response(
        text,
        content_type="application/json; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{_file_name(stored)}.json"'},
    )


def _file_name(stored: StoredDelivery) -> str:
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in stored.delivery_id)
    return f"delivery-{safe[:80]}"


@pages.post("/redeliver/<path:delivery_id>")
async def redeliver(delivery_id: str) -> Any:
    console = parts()
    if console.read_only:
        abort(403, "this console is read-only (CONSOLE_READ_ONLY=true): redeliver is refused")
    form = await request.form
    force = form.get("force") == "yes"
    if force and form.get("confirm") != "yes":
        session().flash = "not redelivered: to run succeeded actions again, tick the confirmation too"
        return redirect(url_for(".delivery", delivery_id=delivery_id))
    said = await console.redeliver(delivery_id, force)
    if said is None:
        abort(404, f"no delivery {delivery_id!r} in the store")
    session().flash = f"redelivered{' (forced: every action runs again)' if force else ''}: {said}"
    return redirect(url_for(".delivery", delivery_id=delivery_id))
