"""The playground: edit a rule file, run it on a real delivery as you type, see its impact, save it.

Every dry run here is the code of `test`, `replay` and `impact` (the loader, the `Matcher`,
`ImpactRun`), with secrets as placeholders when unset: nothing is sent. The editor posts the
whole draft at each pause in typing; the answer (problems at their line, each rule's verdict
with the explanation in the author's own expression, the rendered actions) takes a few
milliseconds of server time (the `Server-Timing` header says how many).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quart import Blueprint, Response, abort, jsonify, redirect, render_template, request, url_for

from engine.console import catalog, inputs
from engine.console.app import ConsoleParts, parts, session
from engine.console.drafts import (
    NEW_RULE,
    Draft,
    check_saved,
    file_problem,
    read_draft,
    resolved_inside,
    rules_with_draft,
    source_file,
    write_draft,
)
from engine.language.impact import ImpactRun, readable_deliveries
from engine.language.matching import Matcher, RuleOutcome
from engine.language.rules import RuleSet
from engine.language.throttle import InMemoryThrottleState
from engine.secrets import Secrets
from engine.store.history import HistoryFilter, kept_deliveries

pages = Blueprint("playground", __name__)

RECENT_SHOWN = 30


@pages.get("/playground")
async def playground() -> Any:
    console = parts()
    path, text = _starting_file(console, request.args.get("file"), request.args.get("rule"))
    chosen_fixtures = inputs.fixtures(console.fixtures_dir)
    delivery_id = request.args.get("delivery", "")
    recent = await console.store.recent(limit=RECENT_SHOWN)
    if not delivery_id and recent:
        delivery_id = recent[0].delivery_id
    source = "delivery" if delivery_id or not chosen_fixtures else "fixture"
    flash, session().flash = session().flash, None
    return await render_template(
        "playground.html",
        path=path,
        text=text,
        source=source,
        delivery_id=delivery_id,
        recent=recent,
        fixtures=[(inputs.fixture_key(f), f.name) for f in chosen_fixtures],
        flash=flash,
        writable=console.rules_writable,
        impact_last=console.impact_last,
    )


def _starting_file(console: ConsoleParts, path: str | None, rule_id: str | None) -> tuple[str, str]:
    """The file to edit: asked for by path, or the file of a rule, or a new rule."""
    if rule_id and not path:
        rule = console.rules.current.get(rule_id)
        path = source_file(console.rules_dir, rule) if rule is not None else None
    if path and file_problem(path) is None:
        target = resolved_inside(console.rules_dir, path)
        if target is not None and target.is_file():
            return path, target.read_text(encoding="utf-8", errors="replace")
    return "my-new-rule.yaml", NEW_RULE


async def _draft(form: Any) -> tuple[Draft, str | None]:
    """The draft loaded off the event loop (in `serve` it is also the receiver's)."""
    path = form.get("path", "").strip()
    text = form.get("text", "")
    draft = await asyncio.to_thread(read_draft, text, path or "draft.yaml", parts().registry)
    return draft, file_problem(path)


@pages.post("/playground/evaluate")
async def evaluate() -> Any:
    started = time.perf_counter()
    console = parts()
    form = await request.form
    draft, path_problem = await _draft(form)
    chosen = await inputs.chosen_input(form, console.store, console.fixtures_dir)
    outcomes: list[RuleOutcome] = []
    if chosen.delivery is not None and draft.rules:
        matcher = Matcher(RuleSet(tuple(draft.rules)), InMemoryThrottleState(), _dry(console))
        outcomes = await matcher.match(chosen.delivery, chosen.now, explain=True)
    return await render_template(
        "_result.html",
        draft=draft,
        path_problem=path_problem,
        chosen=chosen,
        verdicts=[_verdict(outcome, console) for outcome in outcomes],
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )


def _dry(console: ConsoleParts) -> Secrets:
    return Secrets(console.secrets, placeholders=True)


def _verdict(outcome: RuleOutcome, console: ConsoleParts) -> dict[str, Any]:
    masker = console.masker
    return {
        "id": outcome.rule.id,
        "status": outcome.status.value,
        "fired": outcome.fired,
        "reason": masker.mask(outcome.reason),
        "actions": [
            {
                "index": action.index,
                "type": action.type,
                "params": json.dumps(masker.mask(action.params), indent=2, ensure_ascii=False)
                if action.params is not None
                else None,
                "error": masker.mask(action.error),
            }
            for action in outcome.actions
        ],
    }


@pages.post("/playground/impact")
async def impact() -> Any:
    started = time.perf_counter()
    console = parts()
    draft, _path_problem = await _draft(await request.form)
    if draft.problems:
        return await render_template("_impact.html", problems=draft.problems, report=None)
    current = console.rules.current
    run = ImpactRun(current, rules_with_draft(current, console.rules_dir, draft), console.secrets)
    unreadable: list[str] = []
    async for batch in kept_deliveries(console.store, HistoryFilter(last=console.impact_last)):
        await run.feed(readable_deliveries(batch, unreadable))
    return await render_template(
        "_impact.html",
        problems=[],
        report=run.report(unreadable),
        last=console.impact_last,
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )


@pages.post("/playground/fixture")
async def save_fixture() -> Any:
    """The chosen input as a fixture, its expectations what the draft did: a download to commit."""
    console = parts()
    form = await request.form
    draft, _path_problem = await _draft(form)
    chosen = await inputs.chosen_input(form, console.store, console.fixtures_dir)
    if chosen.delivery is None or not draft.rules:
        abort(400, chosen.problem or "the draft has problems: fix them first")
    matcher = Matcher(RuleSet(tuple(draft.rules)), InMemoryThrottleState(), _dry(console))
    outcomes = await matcher.match(chosen.delivery, chosen.now)
    fixture = _fixture(chosen, outcomes)
    text = json.dumps(console.masker.mask(fixture), indent=2, ensure_ascii=False) + "\n"
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in draft.rules[0].id)[:60]
    return Response(
        text,
        content_type="application/json; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}-case.json"'},
    )


def _fixture(chosen: inputs.Input, outcomes: list[RuleOutcome]) -> dict[str, Any]:
    assert chosen.delivery is not None
    delivery = chosen.delivery
    fixture: dict[str, Any] = {"name": f"{', '.join(o.rule.id for o in outcomes)} on {chosen.label}"}
    fixture["event"] = delivery.event
    if delivery.delivery_id != inputs.PASTED_ID:
        fixture["delivery_id"] = delivery.delivery_id
    fixture["payload"] = delivery.payload
    fixture["expect"] = {
        "fired": [o.rule.id for o in outcomes if o.fired],
        "not_fired": [o.rule.id for o in outcomes if not o.fired],
        "actions": [
            {"rule": o.rule.id, "type": a.type, "params": a.params}
            for o in outcomes
            if o.fired
            for a in o.actions
            if a.params is not None
        ],
    }
    return fixture


@pages.post("/playground/save")
async def save_rule() -> Any:
    """Write the draft into RULES_DIR when allowed and the whole folder still loads; else a download."""
    console = parts()
    if console.read_only:
        abort(403, "this console is read-only (CONSOLE_READ_ONLY=true): saving is refused")
    draft, path_problem = await _draft(await request.form)
    if path_problem is not None:
        abort(400, f"not saved: {path_problem}")
    if not console.rules_writable:
        return Response(
            draft.text,
            content_type="text/plain; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{Path(draft.path).name}"'},
        )
    problems = check_saved(console.rules_dir, draft, console.registry)
    if problems:
        shown = "; ".join(console.masker.mask(str(p)) for p in problems[:5])
        session().flash = f"not saved: the rules folder would not load: {shown}"
    else:
        try:
            write_draft(console.rules_dir, draft)
        except OSError as exc:
            abort(400, f"not saved: {exc}")
        moment = datetime.now(UTC).isoformat(timespec="seconds")
        session().flash = f"saved {draft.path} at {moment}: the running engine reloads it within seconds"
    return redirect(url_for(".playground", file=draft.path))


@pages.get("/playground/fields.json")
async def fields() -> Response:
    """The payload fields seen, for the editor's completion after `data.`."""
    console = parts()
    found = console.fields.fresh()
    if found is None:
        stored = [(d.event, d.body) for d in await console.store.recent(limit=200) if d.body is not None]
        found = catalog.build(console.fixtures_dir, stored)
        console.fields.keep(found)
    event = request.args.get("event") or None
    return jsonify({"fields": [vars_of(f) for f in found.fields(event)]})


def vars_of(found: catalog.Field) -> dict[str, str]:
    return {"path": found.path, "type": found.type, "example": found.example}
