"""Group commit: concurrent callers' writes share one transaction, each waiting for its own result.

One transaction per call costs about a millisecond of this process's CPU
(SQLAlchemy, the driver, the commit), whatever it writes. Here whatever calls
arrived while the previous batch was being written go in the next batch, in one
transaction: under load a batch holds many, and when idle a call is written at
once, alone. The one mechanism for both places that need it: the receiver's
intake storing incoming deliveries (engine/pipeline/intake.py), and the workers
claiming and finishing theirs (engine/pipeline/worker.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

WriteBatch = Callable[[Sequence[Item]], Awaitable[Sequence[Result]]]
# Whether a failed batch is written again one item at a time, given its items and the error.
RetryAlone = Callable[[Sequence[Item], Exception], Awaitable[bool]]
# Makes the error each caller of a write that failed for good gets (called once per caller).
CallerError = Callable[[], Exception]
# Given the items of a write that failed for good and its error: what its callers get.
Refusal = Callable[[Sequence[Item], Exception], CallerError]


async def _when_several(items: Sequence[object], error: Exception) -> bool:
    return len(items) > 1


def _the_error(items: Sequence[object], error: Exception) -> CallerError:
    return lambda: error


class GroupCommit(Generic[Item, Result]):
    """Batches `submit` calls into `write_batch` calls, which return one result per item, in order.

    When a batch fails, its items are written again one at a time, once, so that a bad
    item fails only its own caller: by default when the batch held several, or whenever
    `retry_alone` says so. A write that fails for good is handed to `refusal` once (it
    may log it), which says what error each of its callers gets (by default the error).
    """

    def __init__(
        self,
        write_batch: WriteBatch[Item, Result],
        name: str,
        max_batch: int = 200,
        *,
        retry_alone: RetryAlone[Item] = _when_several,
        refusal: Refusal[Item] = _the_error,
    ) -> None:
        self._write_batch = write_batch
        self._name = name
        self._max_batch = max_batch
        self._retry_alone = retry_alone
        self._refusal = refusal
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._stopped_with: CallerError | None = None

    @property
    def busy(self) -> bool:
        """Calls are waiting or being written."""
        return bool(self._pending) or (self._writer is not None and not self._writer.done())

    async def submit(self, item: Item) -> Result:
        answer: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, answer))
        if self._writer is None or self._writer.done():
            self._stopped_with = None
            self._writer = asyncio.create_task(self._write_pending(), name=self._name)
        return await answer

    async def stop(self, error: CallerError) -> None:
        """Stop writing: every call still waiting, or being written, gets an `error()`."""
        self._stopped_with = error
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        self._answer_all(self._pending)
        self._pending.clear()

    async def _write_pending(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await self._write(batch)
            except BaseException:  # cancelled: no caller may wait for ever
                self._answer_all([*batch, *self._pending])
                self._pending.clear()
                raise

    def _answer_all(self, waiting: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        """The stop's error for each caller in `waiting`, or, cancelled otherwise, a cancellation."""
        for _, answer in waiting:
            if answer.done():
                continue
            if self._stopped_with is not None:
                answer.set_exception(self._stopped_with())
            else:
                answer.cancel()

    async def _write(self, batch: list[tuple[Item, asyncio.Future[Result]]], again: bool = False) -> None:
        items = [item for item, _ in batch]
        try:
            results = await self._write_batch(items)
        except Exception as exc:
            if not again and await self._retry_alone(items, exc):
                for one in batch:
                    await self._write([one], again=True)
                return
            caller_error = self._refusal(items, exc)
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(caller_error())
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
