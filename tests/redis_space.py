"""One test's own part of the real Redis: a queue name nobody else uses, and what carries it.

The Redis database is TEST_REDIS_URL's (database 0 by default), shared with whatever else
runs there: an engine, another test run, the other tests of this one. A test keeps to what
carries its queue name: the queue, its jobs (`engine.queue.job_id`), its wake-up channel,
its connections (`engine.queue.connection_name`). It deletes only those keys, kills only
those connections, and flushes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from engine.queue import connection_name, job_id


@dataclass(frozen=True)
class RedisSpace:
    url: str
    queue_name: str = field(default_factory=lambda: f"stockaj-test-{uuid.uuid4().hex[:16]}")

    def job_id(self, delivery_id: str) -> str:
        return job_id(self.queue_name, delivery_id)

    def connection_name(self, role: str) -> str:
        return connection_name(self.queue_name, role)

    def environment(self) -> dict[str, str]:
        """The settings of an engine process working on this space."""
        return {"REDIS_URL": self.url, "QUEUE_NAME": self.queue_name}

    async def own_keys(self, client: aioredis.Redis) -> list[bytes]:
        """The keys that carry this space's queue name: the queue, its jobs and their marks."""
        return [key async for key in client.scan_iter(match=f"*{self.queue_name}*", count=1000)]

    async def forget(self, client: aioredis.Redis) -> None:
        """Delete this space's keys, as a Redis restarted without persistence would, for it alone."""
        keys = await self.own_keys(client)
        if keys:
            await client.delete(*keys)

    async def kill_connections(self, client: aioredis.Redis, role: str, kind: str | None = None) -> int:
        """Kill this space's connections of `role` (of `kind`: normal, pubsub); how many there were."""
        listed = await client.client_list(_type=kind) if kind else await client.client_list()
        mine = [entry["id"] for entry in listed if entry["name"] == self.connection_name(role)]
        for client_id in mine:
            await client.client_kill_filter(_id=client_id)
        return len(mine)
