"""The chaos soak's figures for one shape: what the sender was told, what the store holds,
what the sink saw.

- acknowledged: deliveries answered 2xx at least once (the sender tries again on
  anything else, as Stockaj does); **lost**: acknowledged, yet not stored, or
  stored but still `received`/`processing` once the engine drained.
- executions of an action: requests to the sink with its Idempotency-Key that the
  sink answered 2xx (a slow 2xx counts: the service did the work even though the
  engine stopped waiting). Once, twice, more, never, per action the store's
  matching deliveries call for.
- a repeated execution is explained when the earlier one was in the hands of a
  process killed right after (its connection was open at the kill), or was answered
  slower than the action's timeout; anything else is unexplained.
- a request whose key is not the one the engine derives for its delivery and
  action index (`actions.base.idempotency_key`) is a foreign key.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from actions.base import idempotency_key

KILL_WINDOW_SECONDS = 60.0
ARRIVAL_SLACK_SECONDS = 1.0  # a request sent just before the SIGSTOP may be read by the sink just after
FINISHED = ("done", "failed", "no_match")


@dataclass(frozen=True)
class Kill:
    """A SIGKILL of a process that runs actions, and its connections to the sink at that moment."""

    name: str
    at: float  # time.time()
    ports: frozenset[int]


@dataclass
class Sent:
    """What the sender knows of one delivery."""

    event: str
    acknowledged: bool = False
    attempts: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    seconds_to_ack: float | None = None  # from the first try to the 2xx


def figures(
    shape: str,
    sent: dict[str, Sent],
    stored: dict[str, str],
    records: list[dict[str, Any]],
    kills: list[Kill],
    actions: dict[str, tuple[str, int]],
) -> dict[str, Any]:
    """The report of one shape. `stored`: delivery id -> status; `actions`: event -> (rule, count)."""
    acknowledged = {d for d, s in sent.items() if s.acknowledged}
    not_stored = sorted(acknowledged - stored.keys())
    stuck = sorted(d for d in acknowledged & stored.keys() if stored[d] not in FINISHED)
    expected = _expected_keys(stored, sent, actions)
    executions = _executions(records)
    counts = Counter(min(len(executions.get(key, [])), 3) for key in expected)
    never_done = sorted(
        {expected[key] for key in expected if key not in executions and stored[expected[key]] == "done"}
    )
    duplicates = _duplicates(executions, expected, kills)
    return {
        "shape": shape,
        "sent": len(sent),
        "acknowledged": len(acknowledged),
        "not_acknowledged": len(sent) - len(acknowledged),
        "sender_attempts": sum(s.attempts for s in sent.values()),
        "sender_refusals": dict(sum((s.refusals for s in sent.values()), Counter())),
        "seconds_to_ack": _spread([s.seconds_to_ack for s in sent.values() if s.seconds_to_ack is not None]),
        "stored": len(stored),
        "statuses": dict(Counter(stored.values())),
        "finished": sum(status in FINISHED for status in stored.values()),
        "lost": len(not_stored) + len(stuck),
        "lost_not_stored": not_stored[:20],
        "lost_unfinished": stuck[:20],
        "actions_expected": len(expected),
        "actions_once": counts[1],
        "actions_twice": counts[2],
        "actions_more": counts[3],
        "actions_never": counts[0],
        "never_in_succeeded_deliveries": never_done[:20],
        "never_in_succeeded_count": len(never_done),
        "duplicates": duplicates,
        "foreign_keys": _foreign_keys(records, actions, sent),
        "sink_requests": len(records),
        "sink_answers": dict(Counter(str(r["status"]) + (" slow" if r["slow"] else "") for r in records)),
        "kills": len(kills),
    }


def _spread(values: list[float]) -> dict[str, float]:
    """Median, 99th percentile and maximum, rounded."""
    if not values:
        return {}
    ordered = sorted(values)
    at = lambda share: ordered[min(len(ordered) - 1, int(share * len(ordered)))]  # noqa: E731
    return {"median": round(at(0.5), 3), "p99": round(at(0.99), 3), "max": round(ordered[-1], 3)}


def failures(report: dict[str, Any]) -> list[str]:
    """What makes the run fail, in words."""
    problems = []
    if report["lost"]:
        problems.append(f"{report['lost']} acknowledged deliveries lost")
    if report["never_in_succeeded_count"]:
        problems.append(
            f"{report['never_in_succeeded_count']} succeeded deliveries with an action that never ran"
        )
    if report["foreign_keys"]:
        problems.append(f"{report['foreign_keys']} requests with a key other than their action's")
    if report["duplicates"]["unexplained"]:
        problems.append(
            f"{report['duplicates']['unexplained']} repeated executions neither at a kill nor after a timeout"
        )
    return problems


def _expected_keys(
    stored: dict[str, str], sent: dict[str, Sent], actions: dict[str, tuple[str, int]]
) -> dict[str, str]:
    """Idempotency-Key -> delivery id, for every action a stored delivery's event calls for."""
    expected = {}
    for delivery_id in stored:
        event = sent[delivery_id].event if delivery_id in sent else ""
        if event in actions:
            rule, count = actions[event]
            for index in range(count):
                expected[idempotency_key(delivery_id, rule, index)] = delivery_id
    return expected


def _executions(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    done: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if 200 <= record["status"] < 300 and record["key"]:
            done[record["key"]].append(record)
    for runs in done.values():
        runs.sort(key=lambda r: r["t"])
    return done


def _duplicates(
    executions: dict[str, list[dict[str, Any]]], expected: dict[str, str], kills: list[Kill]
) -> dict[str, Any]:
    at_kill: Counter[str] = Counter()
    after_timeout = 0
    unexplained: list[str] = []
    for key, runs in executions.items():
        if key not in expected:
            continue
        for earlier in runs[:-1]:
            killer = _killed_holder(earlier, kills)
            if killer is not None:
                at_kill[killer] += 1
            elif earlier["slow"]:
                after_timeout += 1
            else:
                unexplained.append(f"{expected[key]}:{earlier['action']}")
    return {
        "at_killed_process": dict(at_kill),
        "after_timed_out_call": after_timeout,
        "unexplained": len(unexplained),
        "unexplained_examples": unexplained[:20],
    }


def _killed_holder(run: dict[str, Any], kills: list[Kill]) -> str | None:
    for kill in kills:
        if run["port"] in kill.ports and -ARRIVAL_SLACK_SECONDS <= kill.at - run["t"] <= KILL_WINDOW_SECONDS:
            return kill.name.rstrip("0123456789-") or kill.name
    return None


def _foreign_keys(
    records: list[dict[str, Any]], actions: dict[str, tuple[str, int]], sent: dict[str, Sent]
) -> int:
    foreign = 0
    for record in records:
        delivery_id, index = record["delivery"], record["action"]
        event = sent[delivery_id].event if delivery_id in sent else None
        if event not in actions or not isinstance(index, int):
            foreign += 1
            continue
        if record["key"] != idempotency_key(delivery_id, actions[event][0], index):
            foreign += 1
    return foreign


def markdown(report: dict[str, Any]) -> str:
    """One shape's figures as a Markdown table."""
    dup = report["duplicates"]
    at_kill = (
        ", ".join(f"{n} at a killed {who}" for who, n in sorted(dup["at_killed_process"].items()))
        or "0 at a kill"
    )
    rows = [
        ("deliveries sent", report["sent"]),
        ("acknowledged (2xx to the sender)", report["acknowledged"]),
        ("never acknowledged (sender gave up)", report["not_acknowledged"]),
        ("stored", report["stored"]),
        ("finished", f"{report['finished']} ({_statuses(report['statuses'])})"),
        ("**lost** (acknowledged, not stored or not finished)", report["lost"]),
        ("actions the stored deliveries call for", report["actions_expected"]),
        ("executed once", report["actions_once"]),
        (
            "executed twice (same Idempotency-Key)",
            f"{report['actions_twice']} ({at_kill}, {dup['after_timed_out_call']} after a timed-out call, "
            f"{dup['unexplained']} unexplained)",
        ),
        ("executed three times or more", report["actions_more"]),
        (
            "never executed",
            f"{report['actions_never']} ({report['never_in_succeeded_count']} in succeeded deliveries)",
        ),
        ("requests with a foreign key", report["foreign_keys"]),
        ("sink requests (answers)", f"{report['sink_requests']} ({_statuses(report['sink_answers'])})"),
    ]
    faults = report.get("faults_by_kind", {})
    rows.append(("faults", f"{sum(faults.values())} ({_statuses(faults)})"))
    if report.get("unexpected_exits"):
        rows.append(("processes that exited by themselves (restarted)", report["unexpected_exits"]))
    lines = [f"### {report['shape']}", "", "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
