"""The arq worker of `stockaj-rules worker`: woken when jobs arrive, claiming a poll's jobs at once.

Two changes to arq's `Worker`, both measured in bench/README.md ("Receiver and pipeline"):

- **Polling when told.** arq polls the queue every `poll_delay`; at the 10 ms a 20 ms
  latency target needs, two idle workers kept a tenth of a core each busy polling on
  the 2-core machine. `DeliveryWorker` instead subscribes to `JOBS_CHANNEL`, on which
  `ArqQueue.enqueue` publishes, and polls when a message arrives, when one of its jobs
  ends while it was full, and otherwise every IDLE_POLL_SECONDS: that poll finds jobs
  a retry deferred (arq re-scores them in the queue, without a message) and keeps the
  worker working while the subscription is down.
- **One round trip per poll.** arq reads the due jobs (ZRANGEBYSCORE), then claims each
  with WATCH, EXISTS, ZSCORE and MULTI/PSETEX/EXEC, four round trips, and three for each
  job another worker took first, which with two workers polling the same queue is half
  of them. `DeliveryWorker` reads and claims with one Lua script, under arq's own rule (a
  job is taken when it is due and no worker has it in progress), atomically, and runs
  each claimed job with arq's own `run_job`.

It relies on arq's `Worker` internals as of arq 0.26 to 0.28 (`_poll_iteration`,
`run_job`, `job_counter`, `sem`, `tasks`, `heart_beat`): pyproject.toml pins arq below 0.29, and
tests/test_arq_worker.py runs the worker on the real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from arq import Worker
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from redis.commands.core import AsyncScript

from engine.queue import JOBS_CHANNEL

# The longest a worker goes without polling: deferred retries, and no subscription.
IDLE_POLL_SECONDS = 0.25
# After the subscription failed, the wait before subscribing again.
RESUBSCRIBE_SECONDS = 1.0

log = logging.getLogger(__name__)

# KEYS[1]: the queue (sorted set, score = when the job is due, ms).
# ARGV: in-progress key prefix, now (ms), in-progress timeout (ms), most jobs to claim, most to read.
# Reads the due jobs as arq's poll does, and claims those no worker has in progress.
# Returns job id, score, job id, score ... of the jobs claimed, in the queue's order.
_POLL_AND_CLAIM_SCRIPT = """
local prefix, now, timeout, most = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local due = redis.call('zrangebyscore', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[5]))
local claimed = {}
for i = 1, #due, 2 do
  if #claimed >= 2 * most then break end
  local key = prefix .. due[i]
  if redis.call('exists', key) == 0 then
    redis.call('psetex', key, timeout, '1')
    claimed[#claimed + 1] = due[i]
    claimed[#claimed + 1] = due[i + 1]
  end
end
return claimed
"""


class DeliveryWorker(Worker):
    """An arq `Worker` that polls when jobs arrive, reading and claiming jobs in one round trip.

    Construct it with `poll_delay=0`: the wait between polls is this class's own.
    """

    _claim_script: AsyncScript | None = None
    _listener: asyncio.Task[None] | None = None
    _work_may_wait: asyncio.Event | None = None
    _was_full = False

    async def _poll_iteration(self) -> None:
        """arq's poll, with its read of the queue and its claims as one script call."""
        if self._work_may_wait is None:
            self._work_may_wait = asyncio.Event()
            self._listener = asyncio.create_task(self._listen(self._work_may_wait), name="arq-jobs-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work_may_wait.wait(), IDLE_POLL_SECONDS)
        self._work_may_wait.clear()  # before polling: what is published from now on wakes the next poll
        if self.burst:  # arq's own burst mode counts jobs as it polls: left as arq does it
            await super()._poll_iteration()
            return
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            await self.claim_jobs()
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # an error in run_job surfaces here, as in arq
        await self.heart_beat()

    async def _listen(self, work_may_wait: asyncio.Event) -> None:
        """Set `work_may_wait` for each message on JOBS_CHANNEL, subscribing again after an error."""
        while True:
            try:
                async with self.pool.pubsub() as pubsub:
                    await pubsub.subscribe(JOBS_CHANNEL)
                    work_may_wait.set()  # jobs may have come while not subscribed
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            work_may_wait.set()
            except Exception as exc:  # Redis away or restarted: the idle polls go on meanwhile
                log.warning(
                    "not subscribed to new jobs (%s: %s); polling every %gs, subscribing again in %gs",
                    type(exc).__name__,
                    exc,
                    IDLE_POLL_SECONDS,
                    RESUBSCRIBE_SECONDS,
                )
            await asyncio.sleep(RESUBSCRIBE_SECONDS)

    async def claim_jobs(self) -> None:
        """Claim due jobs no worker has in progress, as many as this worker has free slots; run them."""
        free = self.max_jobs - self.job_counter
        if free <= 0:
            return
        if self._claim_script is None:
            self._claim_script = self.pool.register_script(_POLL_AND_CLAIM_SCRIPT)
        timeout_ms = int(self.in_progress_timeout_s * 1000)
        args: list[str | int] = [
            in_progress_key_prefix,
            timestamp_ms(),
            timeout_ms,
            free,
            self.queue_read_limit,
        ]
        claimed = await self._claim_script(keys=[self.queue_name], args=args)
        self._was_full = len(claimed) // 2 == free
        for job_id_b, score_b in zip(claimed[::2], claimed[1::2], strict=True):
            job_id = job_id_b.decode()
            await self.sem.acquire()  # never waits: at most max_jobs - job_counter were claimed
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, int(float(score_b))))
            task.add_done_callback(self._job_done)
            self.tasks[job_id] = task

    def _job_done(self, _: asyncio.Task[None]) -> None:
        self._release_sem_dec_counter_on_complete()
        if self._was_full and self._work_may_wait is not None:
            self._was_full = False
            self._work_may_wait.set()  # a slot is free and the last poll left jobs behind

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await super().close()
