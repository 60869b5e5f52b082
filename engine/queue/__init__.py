"""The queue between the store and the workers: one interface, two transports.

- delivery_queue.py: the interface every transport offers (`DeliveryQueue`), and
  `QueueUnavailable`;
- arq_queue.py: `ArqQueue`, jobs on Redis, and arq_worker.py, the worker that runs them;
- in_process.py: `InProcessQueue`, tasks of the `serve` process (the embedded default).

The queue carries only delivery ids; the store is the source of truth, and the
sweeper enqueues again whatever a lost job left pending.
"""

from __future__ import annotations

from engine.queue.arq_queue import PROCESS_FUNCTION, ArqQueue, job_lease, jobs_channel
from engine.queue.delivery_queue import DeliveryQueue, Processor, QueueUnavailable
from engine.queue.in_process import YIELD_SECONDS, InProcessQueue

__all__ = [
    "PROCESS_FUNCTION",
    "YIELD_SECONDS",
    "ArqQueue",
    "DeliveryQueue",
    "InProcessQueue",
    "Processor",
    "QueueUnavailable",
    "job_lease",
    "jobs_channel",
]
