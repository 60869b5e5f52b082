"""`stockaj-rules doctor`: every finding with its fix; exit 0 healthy, 1 with problems."""

from __future__ import annotations

import asyncio
import json
import sys

import click

from engine.config import error_line, load_settings
from engine.errors import ConfigurationError

MARKS = {"ok": ("ok", "green"), "note": ("note", "yellow"), "problem": ("PROBLEM", "red")}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON, for scripts.")
def doctor(as_json: bool) -> None:
    """Check the whole engine and say what to fix.

    Settings, rules, database, queue, workers, deliveries and signatures, each with its fix.
    """
    from engine.pipeline.doctor import Finding, Severity, examine, healthy
    from engine.pipeline.service import masker_for

    try:
        settings = load_settings()
    except ConfigurationError as exc:
        findings = [
            Finding(
                check="settings",
                severity=Severity.PROBLEM,
                summary=error_line(str(exc)),
                fix="fix that variable in the environment; nothing else can be checked before",
            )
        ]
    else:
        findings = asyncio.run(examine(settings, masker_for(settings)))
    if as_json:
        click.echo(json.dumps({"healthy": healthy(findings), "findings": [f.as_json() for f in findings]}))
    else:
        width = max(len(f.check) for f in findings)
        for finding in findings:
            label, colour = MARKS[finding.severity]
            mark = click.style(f"{label:<7}", fg=colour, bold=finding.severity == "problem")
            click.echo(f"{mark} {finding.check:<{width}}  {finding.summary}")
            if finding.fix:
                click.echo(f"{'':<7} {'':<{width}}  fix: {finding.fix}")
        problems = sum(f.severity is Severity.PROBLEM for f in findings)
        click.echo("healthy" if not problems else f"{problems} problem(s) to fix")
    sys.exit(0 if healthy(findings) else 1)
