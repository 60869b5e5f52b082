"""`/health`: what `stockaj-rules doctor` finds, on a page (engine/pipeline/doctor.py).

The same checks in the same order, each finding with its fix: settings, rules, database,
Redis and workers, what arrived, refused signatures by reason, failed deliveries, lag.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, abort, render_template

from engine.console.app import parts
from engine.pipeline.doctor import examine, healthy

pages = Blueprint("health", __name__)


@pages.get("/health")
async def health() -> Any:
    console = parts()
    if console.settings is None:
        abort(404, "this console was started without the engine's settings: run stockaj-rules doctor")
    findings = await examine(console.settings, console.masker)
    return await render_template("health.html", findings=findings, healthy=healthy(findings))
