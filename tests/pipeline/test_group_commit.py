"""GroupCommit: concurrent submissions share write calls; each caller gets its own result or error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from engine.pipeline.group_commit import GroupCommit


class Writer:
    """Records each batch; doubles numbers; refuses negative ones (the whole batch fails)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await self.gate.wait()
        if any(item < 0 for item in items):
            raise ValueError(f"negative: {[item for item in items if item < 0]}")
        return [item * 2 for item in items]


async def test_a_lone_call_is_written_at_once_alone() -> None:
    writer = Writer()
    commit = GroupCommit(writer.write, "test")

    assert await commit.submit(21) == 42
    assert writer.batches == [[21]]


async def test_calls_arriving_during_a_write_share_the_next_one() -> None:
    writer = Writer()
    writer.gate.clear()
    commit = GroupCommit(writer.write, "test")
    first = asyncio.create_task(commit.submit(1))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(commit.submit(n)) for n in range(2, 12)]
    await asyncio.sleep(0)

    writer.gate.set()

    assert await asyncio.gather(first, *rest) == [n * 2 for n in range(1, 12)]
    assert writer.batches == [[1], list(range(2, 12))]


async def test_batches_are_at_most_max_batch() -> None:
    writer = Writer()
    writer.gate.clear()
    commit = GroupCommit(writer.write, "test", max_batch=4)
    calls = [asyncio.create_task(commit.submit(n)) for n in range(10)]
    await asyncio.sleep(0)

    writer.gate.set()
    await asyncio.gather(*calls)

    assert [len(batch) for batch in writer.batches] == [4, 4, 2]


async def test_a_bad_item_fails_only_its_own_caller() -> None:
    writer = Writer()
    writer.gate.clear()
    commit = GroupCommit(writer.write, "test")
    calls = [asyncio.create_task(commit.submit(n)) for n in (1, -2, 3)]
    await asyncio.sleep(0)

    writer.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert results[0] == 2
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "negative: [-2]"
    assert results[2] == 6
    assert writer.batches == [[1, -2, 3], [1], [-2], [3]]


async def test_a_caller_that_gives_up_does_not_stop_the_others() -> None:
    writer = Writer()
    writer.gate.clear()
    commit = GroupCommit(writer.write, "test")
    impatient = asyncio.create_task(commit.submit(1))
    patient = asyncio.create_task(commit.submit(2))
    await asyncio.sleep(0)

    impatient.cancel()
    writer.gate.set()

    assert await patient == 4
    with pytest.raises(asyncio.CancelledError):
        await impatient


async def test_a_writer_that_returns_the_wrong_count_fails_its_callers_with_a_clear_error() -> None:
    async def broken(items: Sequence[int]) -> list[int]:
        return []

    commit = GroupCommit(broken, "broken-writer")

    with pytest.raises(RuntimeError, match="broken-writer: 0 results for a batch of 1"):
        await commit.submit(1)
    with pytest.raises(RuntimeError):  # and the next call is not left waiting
        await asyncio.wait_for(commit.submit(2), 1)


async def test_a_failed_batch_is_not_split_when_retry_alone_says_no_and_each_caller_gets_its_own_refusal() -> (
    None
):
    writer = Writer()
    writer.gate.clear()
    refused: list[tuple[list[int], str]] = []

    async def never(items: Sequence[int], error: Exception) -> bool:
        return False

    def refusal(items: Sequence[int], error: Exception) -> Callable[[], Exception]:
        refused.append((list(items), str(error)))
        return lambda: LookupError("refused")

    commit = GroupCommit(writer.write, "test", retry_alone=never, refusal=refusal)
    calls = [asyncio.create_task(commit.submit(n)) for n in (1, -2, 3)]
    await asyncio.sleep(0)

    writer.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert writer.batches == [[1, -2, 3]]  # not written again one at a time
    assert refused == [([1, -2, 3], "negative: [-2]")]  # the refusal is told once
    assert all(isinstance(result, LookupError) for result in results)
    assert len({id(result) for result in results}) == 3  # one error each: no shared traceback


async def test_a_lone_failed_call_is_written_again_once_when_retry_alone_says_so() -> None:
    attempts: list[list[int]] = []

    async def flaky(items: Sequence[int]) -> list[int]:
        attempts.append(list(items))
        if len(attempts) == 1:
            raise ConnectionError("dropped")
        return [item * 2 for item in items]

    async def always(items: Sequence[int], error: Exception) -> bool:
        return True

    commit = GroupCommit(flaky, "test", retry_alone=always)

    assert await commit.submit(5) == 10
    assert attempts == [[5], [5]]


async def test_stop_answers_every_waiting_caller_with_its_error() -> None:
    writer = Writer()
    writer.gate.clear()
    commit = GroupCommit(writer.write, "test", max_batch=2)
    calls = [asyncio.create_task(commit.submit(n)) for n in range(5)]
    await asyncio.sleep(0)
    assert commit.busy

    await commit.stop(lambda: LookupError("stopping"))
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert [type(result) for result in results] == [LookupError] * 5
    assert not commit.busy
