"""A delivery: one webhook Stockaj sent (or a fixture standing in for one).

`context()` is what conditions and templates see: `event`, `delivery_id`,
`timestamp` (the payload's), `data` (`payload.data`) and `payload` (the body).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Delivery:
    event: str
    delivery_id: str
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def context(self) -> dict[str, Any]:
        data = self.payload.get("data")
        return {
            "event": self.event,
            "delivery_id": self.delivery_id,
            "timestamp": self.payload.get("timestamp"),
            "data": data if data is not None else {},
            "payload": self.payload,
        }
