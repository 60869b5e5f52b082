"""An action's success outlives PostgreSQL dropping the worker's connections.

Found by the chaos soak (bench/chaos_soak.py): `pg_terminate_backend` of the
engine's sessions just after an action succeeded made the write of that success
fail on the dead pooled connection; the run was abandoned, its claim expired, and
the next run sent the action again. The writes that record a run's progress and
end are idempotent (owned by the run's claim token, upserts), so they are written
again on a fresh connection instead: the action stays sent once.
"""

from __future__ import annotations

import pytest

from actions.base import Action, ActionContext, ActionParams, ActionResult
from actions.registry import ActionRegistry, load_registry
from engine.store.tables import ActionStatus, DeliveryStatus

from .test_worker import Bench, bench, key, low_stock, terminate_connections

__all__ = ["bench"]  # the fixture, on PostgreSQL only here

pytestmark = pytest.mark.postgres


class DropParams(ActionParams):
    step: int


def dropping_registry(postgres_url: str, sent: list[str], drop_at: int) -> ActionRegistry:
    """A `drop` action that succeeds; its run number `drop_at` first drops the store's connections."""

    class DropAction(Action[DropParams]):
        type = "drop"
        description = "Succeeds; may drop every connection to the store on the way, as a restart does."
        Params = DropParams

        async def run(self, params: DropParams, ctx: ActionContext) -> ActionResult:
            sent.append(ctx.idempotency_key)
            if params.step == drop_at:
                await terminate_connections(postgres_url)
            return ActionResult(status=200)

    registry = load_registry()
    registry.register(DropAction)
    return registry


TWO_STEPS = """\
- id: steps
  on: item.low_stock
  actions:
    - {type: drop, step: 0}
    - {type: drop, step: 1}
"""


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    ("drop_at", "write"),
    [(0, "the progress saved before the next action"), (1, "the run's end")],
)
async def test_connections_dropped_during_an_action_do_not_make_it_run_again(
    bench: Bench, fresh_postgres_url: str, drop_at: int, write: str
) -> None:
    sent: list[str] = []
    processor = bench.processor(TWO_STEPS, registry=dropping_registry(fresh_postgres_url, sent, drop_at))
    await bench.deliver("d-1", low_stock())

    # The connection `write` goes to was dropped while the action ran: written again on a fresh one.
    assert await processor.process("d-1") is None, write

    assert sent == [key("d-1", "steps", 0), key("d-1", "steps", 1)]
    assert await bench.status("d-1") is DeliveryStatus.DONE
    ledger = await bench.ledger("d-1")
    assert {index: run.status for (_, index), run in ledger.items()} == {
        0: ActionStatus.SUCCEEDED,
        1: ActionStatus.SUCCEEDED,
    }
    # Nothing left for a later run: the claim is over, and no action is sent again.
    bench.clock.advance(3600)
    assert await processor.process("d-1") is None
    assert len(sent) == 2
