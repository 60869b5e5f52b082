"""The arq transport: delivery ids as jobs on Redis, for `stockaj-rules worker` processes.

The job id is the delivery id, so enqueueing a delivery twice is a no-op; but a
job waiting for a later time (an action's retry, deferred) is brought forward to
now: whoever enqueues a delivery means it is due (`redeliver`, the sweeper). A
batch of ids is enqueued with one Lua script call (arq's own job format), instead
of arq's three round trips per job, which also publishes on the database's
`jobs_channel` so that idle workers poll at once (engine/queue/arq_worker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from arq.connections import ArqRedis
from arq.constants import default_queue_name, in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from engine.queue.delivery_queue import QueueUnavailable

PROCESS_FUNCTION = "process_delivery"
JOB_EXPIRES_MS = 24 * 3600 * 1000
# QUEUE_NAME unset: arq's own queue, and job ids that are the delivery ids, as before the setting.
DEFAULT_QUEUE_NAME = default_queue_name
# Published to (the number of jobs added) whenever jobs are enqueued: the workers' wake-up call.
# Redis shares pub/sub channels across its databases, so the database number is part of the name.
JOBS_CHANNEL_PREFIX = "stockaj-rules:jobs-enqueued:db"

# Per id, atomically for the batch: enqueue unless a job or a result exists for it (arq's
# rule); a job that exists, is not in progress and waits for a later time is made due now.
_ENQUEUE_SCRIPT = """
local added = 0
local now = tonumber(KEYS[5])
for i, job_id in ipairs(ARGV) do
  if i % 2 == 1 then
    local job = ARGV[i + 1]
    local job_key = KEYS[1] .. job_id
    if redis.call('exists', job_key, KEYS[2] .. job_id) == 0 then
      redis.call('psetex', job_key, KEYS[4], job)
      redis.call('zadd', KEYS[3], KEYS[5], job_id)
      added = added + 1
    elseif redis.call('exists', KEYS[7] .. job_id) == 0 then
      local score = redis.call('zscore', KEYS[3], job_id)
      if score and tonumber(score) > now then
        redis.call('zadd', KEYS[3], KEYS[5], job_id)
        added = added + 1
      end
    end
  end
end
if added > 0 then
  redis.pcall('publish', KEYS[6], added)  -- a Redis that forbids PUBLISH still takes the jobs
end
return added
"""

log = logging.getLogger(__name__)


class ArqQueue:
    """Jobs on Redis for arq workers."""

    def __init__(self, redis: ArqRedis, queue_name: str = DEFAULT_QUEUE_NAME) -> None:
        self._queue_name = queue_name
        self._redis = redis
        self._script = redis.register_script(_ENQUEUE_SCRIPT)
        self._channel = jobs_channel(redis, queue_name)

    @classmethod
    async def connect(
        cls, redis_url: str, queue_name: str = DEFAULT_QUEUE_NAME, role: str = "receiver"
    ) -> ArqQueue:
        """A queue on `redis_url`; connects lazily, so a Redis outage does not stop the receiver.

        Its connections are named `connection_name(queue_name, role)` (CLIENT LIST shows it).
        """
        name = connection_name(queue_name, role)
        return cls(
            ArqRedis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5, client_name=name),
            queue_name,
        )

    async def enqueue(self, delivery_ids: Sequence[str]) -> None:
        if not delivery_ids:
            return
        now_ms = int(time.time() * 1000)
        argv: list[str | bytes] = []
        for delivery_id in delivery_ids:
            job = serialize_job(PROCESS_FUNCTION, (delivery_id,), {}, None, now_ms)
            argv += [job_id(self._queue_name, delivery_id), job]
        keys = [
            job_key_prefix,
            result_key_prefix,
            self._queue_name,
            str(JOB_EXPIRES_MS),
            str(now_ms),
            self._channel,
            in_progress_key_prefix,
        ]
        try:
            await self._script(keys=keys, args=argv)
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise QueueUnavailable(f"Redis did not take {len(delivery_ids)} job(s): {exc}") from exc
        except Exception as exc:  # redis-py's own ConnectionError/TimeoutError family
            if type(exc).__module__.startswith("redis"):
                raise QueueUnavailable(f"Redis did not take {len(delivery_ids)} job(s): {exc}") from exc
            raise

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


def jobs_channel(redis: Redis, queue_name: str = DEFAULT_QUEUE_NAME) -> str:
    """The channel on which enqueues into this queue of this client's Redis database are announced."""
    channel = f"{JOBS_CHANNEL_PREFIX}{redis.connection_pool.connection_kwargs.get('db', 0)}"
    return channel if queue_name == DEFAULT_QUEUE_NAME else f"{channel}:{queue_name}"


def job_id(queue_name: str, name: str) -> str:
    """The arq job id of a delivery (or of a cron job) on this queue.

    arq keeps a job under `arq:job:<job id>` whatever its queue: the id carries the queue's
    name, so that the same delivery id on two queues of one database makes two jobs.
    """
    return name if queue_name == DEFAULT_QUEUE_NAME else f"{queue_name}:{name}"


def connection_name(queue_name: str, role: str) -> str:
    """The CLIENT SETNAME of a process's Redis connections: `stockaj-rules:<role>:<queue name>`."""
    return f"stockaj-rules:{role}:{queue_name}"


@contextlib.asynccontextmanager
async def job_lease(redis: ArqRedis, job_id: str, seconds: float) -> AsyncIterator[None]:
    """Keep a running job's in-progress mark alive for `seconds` at a time, while this worker lives.

    arq marks a job in progress for its whole timeout, so the job of a worker killed
    mid-delivery (SIGKILL, OOM) would wait that long before another worker may take it;
    the sweeper cannot help, the job still exists. With the worker's in-progress timeout
    set to `seconds` and renewed here every third of it, another worker takes the job
    over at most `seconds` after its worker died.
    """
    key = in_progress_key_prefix + job_id

    async def renew() -> None:
        while True:
            await asyncio.sleep(seconds / 3)
            try:
                await redis.pexpire(key, int(seconds * 1000))
            except Exception as exc:  # Redis away: the job may be taken over, the ledger still holds
                log.warning("could not renew the lease of job %s: %s: %s", job_id, type(exc).__name__, exc)

    renewing = asyncio.create_task(renew(), name=f"job-lease-{job_id}")
    try:
        yield
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)
