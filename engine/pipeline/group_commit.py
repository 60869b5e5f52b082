"""Group commit: concurrent callers' writes share one transaction, each waiting for its own result.

Workers process many deliveries at once; each claims its delivery and records
its finish in the store. One transaction per call costs about a millisecond of
this process's CPU (SQLAlchemy, the driver, the commit), whatever it writes.
Here whatever calls arrived while the previous batch was being written go in
the next batch, in one transaction: under load a batch holds many, and when
idle a call is written at once, alone. The receiver's intake does the same for
incoming deliveries (engine/pipeline/intake.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

WriteBatch = Callable[[Sequence[Item]], Awaitable[Sequence[Result]]]


class GroupCommit(Generic[Item, Result]):
    """Batches `submit` calls into `write_batch` calls, which return one result per item, in order.

    When a batch fails, its items are written again one at a time, so that a bad item
    fails only its own caller, with its own error.
    """

    def __init__(self, write_batch: WriteBatch[Item, Result], name: str, max_batch: int = 200) -> None:
        self._write_batch = write_batch
        self._name = name
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        answer: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, answer))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name=self._name)
        return await answer

    async def _write_pending(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await self._write(batch)
            except BaseException:  # cancelled: no caller may wait for ever
                for _, answer in [*batch, *self._pending]:
                    answer.cancel()
                self._pending.clear()
                raise

    async def _write(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._write_batch([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _, answer = batch[0]
                if not answer.done():
                    answer.set_exception(exc)
                return
            for one in batch:
                await self._write([one])
            return
        if len(results) != len(batch):  # a bug in write_batch: fail its callers, not this writer
            error = RuntimeError(f"{self._name}: {len(results)} results for a batch of {len(batch)}")
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(error)
            return
        for (_, answer), result in zip(batch, results, strict=True):
            if not answer.done():
                answer.set_result(result)
