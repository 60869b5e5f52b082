"""The `log` action: records a message in the delivery log and does nothing else.

It is the safe way to try a rule: everything is matched and rendered as it would
be for real, but nothing leaves the engine.
"""

from __future__ import annotations

from actions.base import Action, ActionContext, ActionParams, ActionResult


class LogParams(ActionParams):
    message: str


class LogAction(Action[LogParams]):
    type = "log"
    description = "Record a message in the delivery log only (for trying rules safely)."
    Params = LogParams

    async def run(self, params: LogParams, ctx: ActionContext) -> ActionResult:
        return ActionResult(detail=params.message)
