"""`/rules`: the loaded rules with their traffic, the rules that never fire, and reload problems.

Traffic is what the delivery log recorded per rule: verdicts by status (fired, and why not),
errors, failed actions, when it last fired. When the newest rule files were refused, the last
good rules stay active and this page lists every problem of the folder, as `check` would (the
console is behind its password; `/readyz`, which anyone may ask, only says where).
"""

from __future__ import annotations

import asyncio
from typing import Any

from quart import Blueprint, render_template

from engine.console.app import parts
from engine.console.drafts import source_file
from engine.errors import SourceErrors
from engine.language.loader import load_rules
from engine.store.log_pages import RuleTraffic, rule_traffic

pages = Blueprint("rules", __name__)

NOT_FIRED_STATUSES = ("condition_false", "field_missing", "event_not_matched", "throttled", "disabled")


@pages.get("/rules")
async def rules() -> Any:
    console = parts()
    traffic = await rule_traffic(console.store)
    current = console.rules.current
    rows: list[dict[str, Any]] = [
        {
            "rule": rule,
            "file": source_file(console.rules_dir, rule) or rule.source,
            "traffic": traffic.get(rule.id, RuleTraffic()),
        }
        for rule in current.rules
    ]
    problems: list[str] = []
    if console.rules.error is not None:
        problems = await asyncio.to_thread(_folder_problems, console)
    return await render_template(
        "rules.html",
        rows=rows,
        never=[row for row in rows if row["traffic"].fired == 0],
        gone=sorted(set(traffic) - set(current.ids())),
        reload_error=console.masker.mask(console.rules.error) if console.rules.error else None,
        problems=problems,
        not_fired_statuses=NOT_FIRED_STATUSES,
    )


def _folder_problems(console: Any) -> list[str]:
    """Every problem of the rules folder now, masked (the running rules are the last good ones)."""
    try:
        load_rules(console.rules_dir, console.registry)
    except SourceErrors as exc:
        return [str(console.masker.mask(str(problem))) for problem in exc.problems]
    return []
