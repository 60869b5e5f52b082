"""The last 24 hours of the delivery log as a picture: deliveries per minute, stacked by status.

Drawn on the server as SVG rectangles (numbers and status names only, nothing from a
delivery), one column per minute, so the page needs no charting script.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

MINUTES = 24 * 60
HEIGHT = 120
# Bottom to top: finished well, nothing to do, still waiting, failed on top where it shows.
STATUS_ORDER = ("done", "no_match", "received", "processing", "failed")


@dataclass(frozen=True, slots=True)
class Bar:
    x: int
    y: float
    height: float
    status: str
    title: str


@dataclass(frozen=True, slots=True)
class DayChart:
    bars: list[Bar]
    peak: int
    totals: dict[str, int]
    start: datetime
    end: datetime
    width: int = MINUTES
    height: int = HEIGHT

    @property
    def hour_marks(self) -> list[tuple[int, str]]:
        """(x, "HH:00") at each whole hour."""
        first = self.start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return [
            (
                int((first + timedelta(hours=h) - self.start).total_seconds() // 60),
                f"{(first.hour + h) % 24:02d}:00",
            )
            for h in range(0, 24, 3)
        ]


def day_chart(counts: list[tuple[str, str, int]], now: datetime) -> DayChart:
    """`counts` of ("YYYY-MM-DD HH:MM" in UTC, status, n), the 24 hours up to `now` (UTC)."""
    end = now.replace(second=0, microsecond=0)
    start = end - timedelta(minutes=MINUTES - 1)
    columns: dict[int, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for minute, status, n in counts:
        try:
            moment = datetime.fromisoformat(minute).replace(tzinfo=now.tzinfo)
        except ValueError:
            continue
        x = int((moment - start).total_seconds() // 60)
        if 0 <= x < MINUTES:
            column = columns.setdefault(x, {})
            column[status] = column.get(status, 0) + n
            totals[status] = totals.get(status, 0) + n
    peak = max((sum(c.values()) for c in columns.values()), default=0)
    bars = []
    for x, column in sorted(columns.items()):
        base = float(HEIGHT)
        label = (start + timedelta(minutes=x)).strftime("%H:%M")
        for status in sorted(column, key=_order):
            height = column[status] / peak * HEIGHT
            base -= height
            bars.append(Bar(x, base, height, status, f"{label} UTC: {column[status]} {status}"))
    return DayChart(bars, peak, totals, start, end)


def _order(status: str) -> int:
    return STATUS_ORDER.index(status) if status in STATUS_ORDER else len(STATUS_ORDER)
