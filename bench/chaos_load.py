"""The chaos soak's sender and rules: signed deliveries at a steady rate, and the rules folder.

The sender posts deliveries signed as Stockaj signs them (engine.signing.sign) at
t0 + n / rate, each in its own task, without waiting for earlier answers. A
delivery that is not answered 2xx (connection refused while the receiver is
down, a 5xx, a timeout) is sent again, with the same id and body, every second
for at most `give_up_seconds`, as Stockaj retries: `acknowledged` means a 2xx
came at least once.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
from chaos_report import Sent

from engine.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign

RULE_ID = "soak-forward"
EVENT = "soak.order"
UNMATCHED_EVENT = "soak.ignored"  # one delivery in 20: no rule, so it ends `no_match`
ACTIONS_PER_DELIVERY = 2
ACTION_TIMEOUT_SECONDS = 2.0
RETRY_PAUSE_SECONDS = 1.0
SEND_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 2.0
MAX_IN_FLIGHT = 100

RULE = """\
# generation {generation}: rewritten by the chaos soak to make the engine reload its rules
id: {rule_id}
on: {event}
actions:
  - type: http
    url: "http://127.0.0.1:{sink_port}/orders/{{{{ delivery_id }}}}"
    timeout: {timeout}
    json:
      delivery: "{{{{ delivery_id }}}}"
      action: 0
      quantity: "{{{{ data.quantity }}}}"
  - type: http
    url: "http://127.0.0.1:{sink_port}/notify"
    timeout: {timeout}
    json:
      delivery: "{{{{ delivery_id }}}}"
      action: 1
"""


def write_rules(rules_dir: Path, sink_port: int, generation: int) -> None:
    """The soak's rule file, replaced atomically (write aside, fsync, rename), as the guide says."""
    text = RULE.format(
        generation=generation,
        rule_id=RULE_ID,
        event=EVENT,
        sink_port=sink_port,
        timeout=ACTION_TIMEOUT_SECONDS,
    )
    aside = rules_dir / ".soak.yaml.new"
    with aside.open("w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(aside, rules_dir / "soak.yaml")


class Sender:
    """Posts `rate` signed deliveries a second to `url` for `duration` seconds."""

    def __init__(self, url: str, secret: str, prefix: str, rate: float, give_up_seconds: float) -> None:
        self.url = url
        self.secret = secret
        self.prefix = prefix
        self.rate = rate
        self.give_up_seconds = give_up_seconds
        self.sent: dict[str, Sent] = {}
        self.refusal_samples: dict[str, list[str]] = {}  # a few distinct messages of each kind
        # Requests wait for a slot here, never in httpx's pool: with thousands queued there (the
        # receiver down for a second at 50 a second, each retried), its queue costs time
        # quadratic in their number and starves the sender's loop.
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(SEND_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
            limits=httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT),
        )

    async def run(self, duration: float) -> dict[str, Sent]:
        tasks = []
        start = time.monotonic()
        total = int(duration * self.rate)
        try:
            for n in range(total):
                pause = start + n / self.rate - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                tasks.append(asyncio.create_task(self._deliver(n)))
            await asyncio.gather(*tasks)
        finally:
            await self._client.aclose()
        return self.sent

    async def _deliver(self, n: int) -> None:
        delivery_id = f"{self.prefix}-{n:07d}"
        event = UNMATCHED_EVENT if n % 20 == 7 else EVENT
        body = json.dumps(
            {"event": event, "timestamp": "2026-03-01T09:00:00Z", "data": {"n": n, "quantity": n % 13}}
        ).encode()
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: event,
            DELIVERY_HEADER: delivery_id,
            SIGNATURE_HEADER: sign(body, self.secret),
        }
        sent = self.sent[delivery_id] = Sent(event)
        first = time.monotonic()
        while time.monotonic() < first + self.give_up_seconds:
            sent.attempts += 1
            try:
                async with self._slots:
                    response = await self._client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                self._refused(sent, type(exc).__name__, f"{exc!r}"[:120])
            else:
                if 200 <= response.status_code < 300:
                    sent.acknowledged = True
                    sent.seconds_to_ack = time.monotonic() - first
                    return
                self._refused(sent, str(response.status_code), response.text[:120])
            await asyncio.sleep(RETRY_PAUSE_SECONDS)

    def _refused(self, sent: Sent, kind: str, why: str) -> None:
        sent.refusals[kind] += 1
        seen = self.refusal_samples.setdefault(kind, [])
        if len(seen) < 3 and why not in seen:
            seen.append(why)
