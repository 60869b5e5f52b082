"""`redeliver`'s exit code says how the delivery ended, embedded and with workers on Redis.

With REDIS_URL a real `stockaj-rules worker` process runs it, on the test's own
Redis database and a SQLite store both processes open; the rule's action posts to a
real local HTTP server that records every request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_cli_ops import (
    RecordingServer,
    env_for,
    rules_dir,  # noqa: F401 - a fixture
    run,
    server,  # noqa: F401 - a fixture
    store_delivery,
)
from tests.cli.test_process_lifecycle import started
from tests.redis_space import RedisSpace

# A worker's start and a redelivery's wait (60 s at most) on a machine busy with other tests.
WORKER_TEST_SECONDS = 150


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    assert run("db", "upgrade", env={"DATABASE_URL": url}).exit_code == 0
    return url


def test_an_embedded_redeliver_that_fails_says_why(
    sqlite_url: str,
    rules_dir: Path,  # noqa: F811
    server: RecordingServer,  # noqa: F811
) -> None:
    store_delivery(sqlite_url, "e-1")
    server.statuses = [422]

    result = run("redeliver", "e-1", env=env_for(sqlite_url, rules_dir, MAX_ATTEMPTS="1"))

    assert result.exit_code == 1
    line = result.stdout.strip()
    assert line.startswith(
        "e-1: failed: an action failed: reorder actions[0] (http): POST http://127.0.0.1:"
    ), line
    assert "answered 422" in line


@pytest.fixture
def workers_env(
    sqlite_url: str,
    rules_dir: Path,  # noqa: F811
    redis_space: RedisSpace,
) -> dict[str, str]:
    return env_for(
        sqlite_url, rules_dir, **redis_space.environment(), MAX_ATTEMPTS="2", RETRY_BASE_SECONDS="30"
    )


@pytest.fixture
def worker(workers_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    with started("worker", env={**workers_env, "LOG_FORMAT": "console"}, cwd=tmp_path) as (_, output):
        output.wait_for("Starting worker")
        yield


@pytest.mark.redis
@pytest.mark.usefixtures("worker")
@pytest.mark.timeout(WORKER_TEST_SECONDS)
def test_redeliver_with_workers_waits_for_them_and_exits_1_with_the_reason_when_it_fails(
    workers_env: dict[str, str],
    sqlite_url: str,
    server: RecordingServer,  # noqa: F811
) -> None:
    store_delivery(sqlite_url, "w-1")
    server.statuses = [422]

    failed = run("redeliver", "w-1", env=workers_env)
    fixed = run("redeliver", "w-1", env=workers_env)

    assert failed.exit_code == 1, failed.output
    assert failed.stdout.startswith("w-1: failed: an action failed: reorder actions[0] (http): POST "), (
        failed.stdout
    )
    assert "answered 422" in failed.stdout
    assert (fixed.exit_code, fixed.stdout) == (0, "w-1: done\n")
    assert len(server.requests) == 2


@pytest.mark.redis
@pytest.mark.usefixtures("worker")
@pytest.mark.timeout(WORKER_TEST_SECONDS)
def test_redeliver_with_workers_exits_0_when_an_action_waits_for_a_retry(
    workers_env: dict[str, str],
    sqlite_url: str,
    server: RecordingServer,  # noqa: F811
) -> None:
    store_delivery(sqlite_url, "w-2")
    server.statuses = [503]

    waiting = run("redeliver", "w-2", env=workers_env)

    assert waiting.exit_code == 0, waiting.output
    assert waiting.stdout.startswith("w-2: processing; an action will be retried in "), waiting.stdout


@pytest.mark.redis
def test_redeliver_with_no_worker_running_gives_up_after_its_timeout_with_exit_1(
    workers_env: dict[str, str], sqlite_url: str
) -> None:
    store_delivery(sqlite_url, "w-3")

    result = run("redeliver", "w-3", "--timeout", "0.5", env=workers_env)

    assert result.exit_code == 1
    assert result.stdout == (
        "w-3: not finished within 0.5s (--timeout): no worker has ended a run of it yet; is a worker "
        "running? `deliveries show w-3` says how it ends\n"
    )


@pytest.mark.redis
def test_redeliver_no_wait_exits_0_once_enqueued_and_says_so(
    workers_env: dict[str, str], sqlite_url: str
) -> None:
    store_delivery(sqlite_url, "w-4")

    result = run("redeliver", "w-4", "--no-wait", env=workers_env)

    assert (result.exit_code, result.stdout) == (
        0,
        "w-4: enqueued for the workers (not waited for: `deliveries show w-4` says how it ends)\n",
    )
