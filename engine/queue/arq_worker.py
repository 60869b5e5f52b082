"""The arq worker of `stockaj-rules worker`: woken when jobs arrive, taking a poll's jobs at once.

Three changes to arq's `Worker`; the first two are measured in bench/README.md ("Receiver
and pipeline"):

- **Polling when told.** arq polls the queue every `poll_delay`; at the 10 ms a 20 ms
  latency target needs, two idle workers kept a tenth of a core each busy polling on
  the 2-core machine. `DeliveryWorker` instead subscribes to its database's
  `jobs_channel`, on which `ArqQueue.enqueue` publishes, and polls when a message
  arrives, when one of its jobs ends while it was full, and otherwise every
  IDLE_POLL_SECONDS: that poll finds jobs a retry deferred (arq re-scores them in the
  queue, without a message) and keeps the worker working while the subscription is down.
- **One take per poll.** arq's `start_jobs` takes each job it polled with WATCH,
  EXISTS, ZSCORE and MULTI/PSETEX/EXEC, four round trips, and three for each job that
  another worker took first, which with two workers polling the same queue is half of
  them. `DeliveryWorker` takes them with one Lua script under arq's own rule (a job is
  taken when no worker has it in progress and its time has come), atomically, and runs
  each job taken with arq's own `run_job`. (Taking a job is not claiming its delivery:
  the run claims the delivery in the store, engine/store/runs.py.)
- **Riding out a Redis outage.** arq's poll lets a lost connection end the worker, so a
  restarted Redis stopped every worker at once. `DeliveryWorker` logs it once and polls
  again every REDIS_RETRY_SECONDS until Redis answers.

It relies on arq's `Worker` internals as of arq 0.26 to 0.28 (`_poll_iteration`,
`start_jobs`, `job_counter`, `sem`, `tasks`): pyproject.toml pins arq below 0.29, and
tests/queue/test_arq_worker.py runs the worker on the real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.exceptions
from arq import Worker
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from redis.commands.core import AsyncScript

from engine.queue.arq_queue import DEFAULT_QUEUE_NAME, connection_name, jobs_channel

# The longest a worker goes without polling: deferred retries, and no subscription.
IDLE_POLL_SECONDS = 0.25
# After the subscription failed, the wait before subscribing again.
RESUBSCRIBE_SECONDS = 1.0
# After a poll failed on Redis, the wait before the next.
REDIS_RETRY_SECONDS = 1.0

log = logging.getLogger(__name__)

# KEYS[1]: the queue (sorted set, score = when the job is due, ms).
# ARGV: in-progress key prefix, now (ms), in-progress timeout (ms), most jobs to take, job ids.
# Returns job id, score, job id, score ... of the jobs taken, in the order given.
_TAKE_JOBS_SCRIPT = """
local prefix, now, timeout, most = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local taken = {}
for i = 5, #ARGV do
  if #taken >= 2 * most then break end
  local job_id = ARGV[i]
  local key = prefix .. job_id
  if redis.call('exists', key) == 0 then
    local score = redis.call('zscore', KEYS[1], job_id)
    if score and tonumber(score) <= now then
      redis.call('psetex', key, timeout, '1')
      taken[#taken + 1] = job_id
      taken[#taken + 1] = score
    end
  end
end
return taken
"""


def worker_pool(redis_url: str, queue_name: str = DEFAULT_QUEUE_NAME) -> ArqRedis:
    """A worker's Redis client (its `redis_pool`), its connections named for the queue.

    arq's own pool (from `redis_settings`) cannot name its connections, and retries a Redis
    that does not answer five times, warning each time; this one fails at the first command.
    """
    name = connection_name(queue_name, "worker")
    pool: ArqRedis = ArqRedis.from_url(redis_url, socket_connect_timeout=2, client_name=name)
    pool.default_queue_name = queue_name
    return pool


class DeliveryWorker(Worker):
    """An arq `Worker` that polls when jobs arrive and takes what it polled in one round trip.

    Construct it with `poll_delay=0`, `queue_name` and `redis_pool=worker_pool(...)`: the wait
    between polls is this class's own.
    """

    _take_jobs_script: AsyncScript | None = None
    _listener: asyncio.Task[None] | None = None
    _work_may_wait: asyncio.Event | None = None
    _was_full = False
    _redis_away = False

    async def _poll_iteration(self) -> None:
        if self._work_may_wait is None:
            self._work_may_wait = asyncio.Event()
            self._listener = asyncio.create_task(self._listen(self._work_may_wait), name="arq-jobs-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work_may_wait.wait(), IDLE_POLL_SECONDS)
        self._work_may_wait.clear()  # before polling: what is published from now on wakes the next poll
        try:
            await super()._poll_iteration()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            # Redis restarting, or away for a while: keep trying, the store keeps every delivery.
            # A job whose end arq could not record is taken again later; its run finds the
            # delivery finished in the store and does nothing.
            if not self._redis_away:
                log.warning(
                    "lost Redis (%s: %s); polling again every %gs until it is back",
                    type(exc).__name__,
                    exc,
                    REDIS_RETRY_SECONDS,
                )
                self._redis_away = True
            await asyncio.sleep(REDIS_RETRY_SECONDS)
            return
        if self._redis_away:
            log.info("Redis is back")
            self._redis_away = False

    async def _listen(self, work_may_wait: asyncio.Event) -> None:
        """Set `work_may_wait` for each message on `jobs_channel`, subscribing again after an error.

        The first failure is a warning; while Redis stays away, the attempts after it log at
        DEBUG, and subscribing again is logged once.
        """
        failing = False
        while True:
            try:
                async with self.pool.pubsub() as pubsub:
                    await pubsub.subscribe(jobs_channel(self.pool, self.queue_name))
                    work_may_wait.set()  # jobs may have come while not subscribed
                    if failing:
                        log.info("subscribed to new jobs again")
                        failing = False
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            work_may_wait.set()
            except Exception as exc:  # Redis away or restarted: the idle polls go on meanwhile
                log.log(
                    logging.DEBUG if failing else logging.WARNING,
                    "not subscribed to new jobs (%s: %s); polling every %gs, subscribing again every %gs",
                    type(exc).__name__,
                    exc,
                    IDLE_POLL_SECONDS,
                    RESUBSCRIBE_SECONDS,
                )
                failing = True
            await asyncio.sleep(RESUBSCRIBE_SECONDS)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        free = self.max_jobs - self.job_counter
        if free <= 0 or not job_ids:
            return
        if self._take_jobs_script is None:
            self._take_jobs_script = self.pool.register_script(_TAKE_JOBS_SCRIPT)
        timeout_ms = int(self.in_progress_timeout_s * 1000)
        args: list[str | bytes | int] = [in_progress_key_prefix, timestamp_ms(), timeout_ms, free, *job_ids]
        taken = await self._take_jobs_script(keys=[self.queue_name], args=args)
        self._was_full = len(taken) // 2 == free
        for job_id_b, score_b in zip(taken[::2], taken[1::2], strict=True):
            job_id = job_id_b.decode()
            await self.sem.acquire()  # never waits: at most max_jobs - job_counter were taken
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
        try:
            await super().close()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            # Stopping while Redis is away: arq could not delete its health-check key (it
            # expires by itself); the deliveries in hand are recorded in the store.
            log.warning("stopping without Redis (%s: %s)", type(exc).__name__, exc)
            if self._pool is not None:
                await self._pool.aclose()
                self._pool = None
