"""The queue between the store and the workers: one interface, two transports.

- delivery_queue.py: the interface every transport offers (`DeliveryQueue`), and
  `QueueUnavailable`;
- arq_queue.py: `ArqQueue`, jobs on Redis, and arq_worker.py, the worker that runs them;
  installations sharing a Redis database keep apart by QUEUE_NAME: the queue's sorted set,
  the job ids (`job_id`), the channel and the connections' names (`connection_name`) carry it;
- in_process.py: `InProcessQueue`, tasks of the `serve` process (the embedded default).

The queue carries only delivery ids; the store is the source of truth, and the
sweeper enqueues again whatever a lost job left pending.
"""

from __future__ import annotations

from engine.queue.arq_queue import (
    DEFAULT_QUEUE_NAME,
    PROCESS_FUNCTION,
    ArqQueue,
    connection_name,
    job_id,
    job_lease,
    jobs_channel,
)
from engine.queue.delivery_queue import DeliveryQueue, Processor, QueueUnavailable
from engine.queue.in_process import YIELD_SECONDS, InProcessQueue

__all__ = [
    "DEFAULT_QUEUE_NAME",
    "PROCESS_FUNCTION",
    "YIELD_SECONDS",
    "ArqQueue",
    "DeliveryQueue",
    "InProcessQueue",
    "Processor",
    "QueueUnavailable",
    "connection_name",
    "job_id",
    "job_lease",
    "jobs_channel",
]
