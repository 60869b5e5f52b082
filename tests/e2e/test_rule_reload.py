"""Rule files change under running processes: picked up without a restart; a broken one changes nothing.

In the distributed topology the workers, which run the rules, reload too; the
receiver's /readyz reports the broken file with its line and column.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from actions.base import idempotency_key
from engine.store.tables import ActionStatus, DeliveryStatus

from .conftest import (
    RENTAL,
    SLACK_PATH,
    Deployment,
    Sink,
    eventually,
    rental,
    until,
)

pytestmark = pytest.mark.e2e

RENTAL_V2 = """\
id: rental-to-crm
on: rent.created
actions:
  - type: slack
    text: "Rental {{ data.id }} booked by {{ data.renter.name }}"
"""

# Line 4, column 11: the action type.
RENTAL_BROKEN = """\
id: rental-to-crm
on: rent.created
actions:
  - type: slak
    text: "Rental {{ data.id }}"
"""

UPDATES = """\
id: item-updates-logged
on: item.updated
actions:
  - type: log
    message: "{{ data.name }} now at {{ data.quantity }}"
"""


def logged(deployment: Deployment, prefix: str) -> bool:
    """Every process of the deployment logged a line starting with `prefix`."""
    return all(
        any(line["event"].startswith(prefix) for line in proc.log_events())
        for proc in deployment.processes
        if proc.alive()
    )


async def test_rule_files_reload_without_restart_and_a_broken_file_keeps_the_last_good_rules(
    deployment: Deployment, sink: Sink
) -> None:
    rentals = deployment.rules_dir / "rentals.yaml"

    # Changed and added files: new behaviour, no restart.
    rentals.write_text(RENTAL_V2)
    (deployment.rules_dir / "updates.yaml").write_text(UPDATES)
    await until(lambda: logged(deployment, "rules reloaded: 3 rule(s)"), 10, "the new rules were not loaded")
    await deployment.accept("v2", rental("v2"))
    item_updated = {"event": "item.updated", "data": {"id": 9, "name": "Tent", "quantity": 4}}
    await deployment.accept("upd-1", item_updated)
    rows = await deployment.finished(["v2", "upd-1"])
    assert {row.status for row in rows.values()} == {DeliveryStatus.DONE}
    [message] = sink.with_key(idempotency_key("v2", RENTAL, 0))
    assert (message.path, message.json) == (SLACK_PATH, {"text": "Rental v2 booked by Ada Lovelace"})
    assert not sink.requests("/crm/")  # the CRM action is gone from the rule
    run = (await deployment.ledger("upd-1"))[("item-updates-logged", 0)]
    assert (run.status, run.params) == (ActionStatus.SUCCEEDED, {"message": "Tent now at 4"})

    # A broken file: /readyz says where; the last good rules keep working.
    rentals.write_text(RENTAL_BROKEN)

    async def not_ready() -> dict[str, Any] | None:
        response = await deployment.http.get(deployment.url + "/readyz")
        return response.json() if response.status_code == 503 else None

    readiness = await eventually(not_ready, 10, "/readyz did not report the broken rule file")
    rules = readiness["checks"]["rules"]
    assert rules["problems"] == ["rentals.yaml:4:11"]
    assert "rentals.yaml:4:11" in rules["error"]
    assert "slak" not in json.dumps(readiness)  # where, never what the file says
    assert readiness["checks"]["store"]["ok"]
    assert readiness["checks"]["queue"]["ok"]
    await until(lambda: logged(deployment, "rule files are broken"), 10, "not every process saw the break")
    await deployment.accept("v3", rental("v3"))
    await deployment.finished(["v3"])
    [message] = sink.with_key(idempotency_key("v3", RENTAL, 0))
    assert message.json == {"text": "Rental v3 booked by Ada Lovelace"}

    # Fixed again: ready again.
    rentals.write_text(RENTAL_V2)
    await deployment.wait_ready(within=10)

    # The whole folder replaced, as a deploy may do it: watched again, the new rules apply.
    shutil.rmtree(deployment.rules_dir)
    readiness = await eventually(not_ready, 10, "/readyz did not report the missing rules folder")
    assert "rules folder not found" in readiness["checks"]["rules"]["error"]
    deployment.rules_dir.mkdir()
    (deployment.rules_dir / "rentals.yaml").write_text(RENTAL_V2.replace("booked by", "taken by"))
    await deployment.wait_ready(within=10)
    await until(lambda: logged(deployment, "rules reloaded: 1 rule(s)"), 10, "the new folder was not loaded")
    await deployment.accept("v4", rental("v4"))
    await deployment.finished(["v4"])
    [message] = sink.with_key(idempotency_key("v4", RENTAL, 0))
    assert message.json == {"text": "Rental v4 taken by Ada Lovelace"}


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """352-ish bytes that expand to width**levels values through YAML aliases."""
    names = "abcdefghijklmnopqrstuvwxyz"[:levels]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['x'] * width)}]"]
    for before, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [{', '.join([f'*{before}'] * width)}]")
    return "\n".join(lines) + "\n"


def many_rules(folder: Path, files: int, per_file: int) -> None:
    """A big but honest rules folder: `files` files of `per_file` rules, each with a template."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        text = "".join(
            f"- id: bulk-{f}-{r}\n  on: item.updated\n  when: {{'>': [{{var: data.quantity}}, {r}]}}\n"
            f"  actions:\n    - type: log\n      message: 'bulk {f}-{r}: {{{{ data.name }}}}'\n"
            for r in range(per_file)
        )
        (folder / f"bulk-{f:03d}.yaml").write_text(text)


async def healthz_latencies(deployment: Deployment, seconds: float) -> list[float]:
    """Poll /healthz for `seconds`; how long each answer took (a 1 s timeout fails the test)."""
    took = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            response = await deployment.http.get(deployment.url + "/healthz", timeout=1.0)
        except httpx.TimeoutException:
            pytest.fail(f"/healthz did not answer within 1 s, {seconds - (deadline - started):.1f}s in")
        assert response.status_code == 200
        took.append(time.monotonic() - started)
        await asyncio.sleep(0.05)
    return took


@pytest.mark.parametrize("topology", ["embedded"], indirect=True)
@pytest.mark.timeout(120)
async def test_a_hostile_rules_folder_never_stops_the_receiver_answering(deployment: Deployment) -> None:
    assert deployment.serve is not None
    (deployment.rules_dir / "laughs.yaml").write_text(billion_laughs())
    many_rules(deployment.rules_dir / "bulk", files=100, per_file=20)
    took = await healthz_latencies(deployment, 8.0)
    assert max(took) < 1.0

    async def refused() -> dict[str, Any] | None:
        response = await deployment.http.get(deployment.url + "/readyz", timeout=1.0)
        return response.json() if response.status_code == 503 else None

    readiness = await eventually(refused, 30, "/readyz never reported the hostile file")
    rules = readiness["checks"]["rules"]
    assert [p for p in rules["problems"] if p.startswith("laughs.yaml:")], rules
    assert "*a" not in json.dumps(readiness)
    await until(lambda: logged(deployment, "rule files are broken"), 10, "the refusal was not logged")

    # SIGTERM in the middle of a long reload stops serve promptly.
    (deployment.rules_dir / "laughs.yaml").unlink()
    many_rules(deployment.rules_dir / "bulk2", files=100, per_file=20)
    await asyncio.sleep(1.5)  # the change is seen, the files settle, loading starts
    started = time.monotonic()
    deployment.serve.popen.send_signal(signal.SIGTERM)
    deployment.serve.wait(30)
    assert time.monotonic() - started < 5.0
