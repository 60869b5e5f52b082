"""The end-to-end harness: real `stockaj-rules` processes and a sink that plays their world.

- `Sink`: an HTTP server on 127.0.0.1, in a thread of the test process, playing
  Slack, the purchase-order system and a CRM. It records every request (path,
  headers with the Idempotency-Key, JSON, arrival time, client port) and answers
  200 unless a path is scripted (`sink.script("/po/orders", Answer(500), ...)`).
- `Deployment`: one installation, as an operator would run it: its environment,
  its rules folder, its processes (`serve`, `worker`, CLI commands), signed
  posts, and reads of the store it writes.
- `deployment`: both topologies of the spec, as one parametrized fixture:
  `embedded` (`serve` alone on SQLite, the in-process worker) and `distributed`
  (`serve` plus two `worker`s on the real Redis and PostgreSQL).

Every process is stopped in teardown; when a test fails, the logs of every
process it started are printed with the failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from actions.base import idempotency_key
from engine.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign
from engine.store import ActionRun, Store, StoredDelivery, database
from engine.store.tables import DeliveryStatus
from tests.redis_space import RedisSpace

T = TypeVar("T")

CLI = str(Path(sys.executable).with_name("stockaj-rules"))
SECRET = "e2e-webhook-secret"
CRM_TOKEN = "crm-token-e2e-5f1c"
PO_TOKEN = "po-token-e2e-93ab"
REQUEUE_AFTER_SECONDS = 2.0
SLACK_PATH = "/slack/T000/B000/e2e-slack-token"
PO_PATH = "/po/orders"
CRM_PREFIX = "/crm/rentals/"
FINISHED = {DeliveryStatus.DONE, DeliveryStatus.FAILED, DeliveryStatus.NO_MATCH}

# The rule files every deployment starts with: the integration guide's patterns, against the sink.
REORDER_RULE = """\
id: reorder-low-stock
on: item.low_stock
when:
  "<=":
    - var: data.quantity
    - var: data.minimum_quantity
actions:
  - type: purchase_order
    item_sku: "{{ data.external_id }}"
    quantity: "{{ data.minimum_quantity * 2 - data.quantity }}"
    notes: "Auto-reorder: {{ data.name }}"
  - type: slack
    text: "Ordered {{ data.minimum_quantity * 2 - data.quantity }} x {{ data.name }}"
"""

RENTAL_RULE = """\
id: rental-to-crm
on: rent.created
actions:
  - type: http
    url: "http://127.0.0.1:{sink_port}/crm/rentals/{{{{ data.id }}}}"
    headers:
      Authorization: "Bearer {{{{ secrets.CRM_TOKEN }}}}"
    json:
      rental: "{{{{ data.id }}}}"
      renter: "{{{{ data.renter.name }}}}"
  - type: slack
    text: "New rental #{{{{ data.id }}}} for {{{{ data.renter.name }}}}"
"""

REORDER = "reorder-low-stock"
RENTAL = "rental-to-crm"


# --- the sink -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One scripted answer of the sink."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes = b'{"ok": true}'


@dataclass(frozen=True)
class SinkRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    json: Any
    at: float  # time.monotonic() on arrival
    client_port: int

    @property
    def key(self) -> str | None:
        return self.headers.get("idempotency-key")


class Sink:
    """Slack, the purchase-order system and a CRM, on one local port."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[SinkRequest] = []
        self._scripts: dict[str, deque[Answer]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *answers: Answer) -> None:
        """The next requests to `path` get these answers, in order; then 200 again."""
        with self._lock:
            self._scripts.setdefault(path, deque()).extend(answers)

    def requests(self, path_prefix: str = "") -> list[SinkRequest]:
        with self._lock:
            return [r for r in self._requests if r.path.startswith(path_prefix)]

    def with_key(self, key: str) -> list[SinkRequest]:
        return [r for r in self.requests() if r.key == key]

    def counts(self, keys: Iterable[str]) -> dict[str, int]:
        """How many requests carried each of `keys` (0 for none)."""
        seen = Counter(r.key for r in self.requests())
        return {key: seen[key] for key in keys}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _record(self, request: SinkRequest) -> Answer:
        with self._lock:
            self._requests.append(request)
            script = self._scripts.get(request.path)
            return script.popleft() if script else Answer()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    payload = json.loads(raw) if raw else None
                except ValueError:
                    payload = raw.decode(errors="replace")
                answer = sink._record(
                    SinkRequest(
                        self.command,
                        self.path,
                        {name.lower(): value for name, value in self.headers.items()},
                        payload,
                        time.monotonic(),
                        self.client_address[1],
                    )
                )
                if answer.delay:
                    time.sleep(answer.delay)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:  # the caller was killed while we were slow: that is the point
                    self.close_connection = True

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.close()


# --- processes --------------------------------------------------------------------------------


class Proc:
    """One `stockaj-rules` process, its stdout and stderr in a log file."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        logs: Path,
        cwd: Path,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.metrics_url = ""
        self.log_path = logs / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [CLI, *args],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=preexec_fn,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def announced(self, prefix: str, within: float = 20.0) -> str:
        """The rest of the first log event that starts with `prefix` (`listening on http://...`).

        Ports are bound by the process itself (`--port 0`): it says which, nobody races for one.
        """

        async def said() -> str | None:
            if not self.alive():
                pytest.fail(f"{self.name} exited with {self.popen.returncode}:\n{self.log()}")
            events = (event.get("event", "") for event in self.log_events())
            return next((event.removeprefix(prefix) for event in events if event.startswith(prefix)), None)

        return await eventually(said, within, f"{self.name} never logged {prefix!r}")

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines (LOG_FORMAT=json); anything else is skipped."""
        events = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; SIGKILL after `timeout`. The exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        """Wait for the exit; SIGKILL after `timeout`. The exit code."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        if self.alive():
            self.popen.kill()
        return self.popen.wait(10)


def connection_owner(client_port: int, pids: Iterable[int]) -> int | None:
    """Which of `pids` holds the local TCP socket on `client_port` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == client_port:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue
    return None


async def eventually(check: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    """Poll `check` until it returns something not None (or fail after `within` seconds, saying `what`)."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"after {within:g}s: {what}")
        await asyncio.sleep(0.05)


async def until(condition: Callable[[], bool], within: float, what: str) -> None:
    """Poll a plain `condition` until it holds (or fail after `within` seconds, saying `what`)."""

    async def check() -> bool | None:
        return True if condition() else None

    await eventually(check, within, what)


# --- deliveries -------------------------------------------------------------------------------


def low_stock(n: int | str, quantity: int = 3, minimum: int = 5) -> dict[str, Any]:
    return {
        "event": "item.low_stock",
        "timestamp": "2026-03-01T09:00:00Z",
        "data": {
            "id": n,
            "name": f"Tent {n}",
            "quantity": quantity,
            "minimum_quantity": minimum,
            "external_id": f"SKU-{n}",
        },
    }


def rental(rental_id: str, renter: str = "Ada Lovelace") -> dict[str, Any]:
    return {
        "event": "rent.created",
        "timestamp": "2026-03-01T09:00:00Z",
        "data": {"id": rental_id, "renter": {"name": renter}, "items": [{"id": 1}], "status": "open"},
    }


def keys(delivery_id: str, rule_id: str, count: int = 2) -> list[str]:
    """The Idempotency-Keys of a rule's first `count` actions for a delivery."""
    return [idempotency_key(delivery_id, rule_id, index) for index in range(count)]


# --- a deployment -----------------------------------------------------------------------------


class Deployment:
    """One installation: environment, rules folder, processes, store."""

    def __init__(self, root: Path, sink: Sink, database_url: str, redis: RedisSpace | None) -> None:
        self.root = root
        self.sink = sink
        self.topology = "distributed" if redis else "embedded"
        self.rules_dir = root / "rules"
        self.rules_dir.mkdir()
        (self.rules_dir / "reorder.yaml").write_text(REORDER_RULE)
        (self.rules_dir / "rentals.yaml").write_text(RENTAL_RULE.format(sink_port=sink.port))
        self.logs = root / "logs"
        self.logs.mkdir()
        # Known once `serve` has started: the port it bound and logged (`serve --port 0`).
        self.port = 0
        self.url = ""
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root),
            "LANG": "C.UTF-8",
            "STOCKAJ_WEBHOOK_SECRET": SECRET,
            "DATABASE_URL": database_url,
            "RULES_DIR": str(self.rules_dir),
            "HOST": "127.0.0.1",
            "SLACK_WEBHOOK_URL": sink.url(SLACK_PATH),
            "PURCHASE_ORDER_URL": sink.url(PO_PATH),
            "PURCHASE_ORDER_TOKEN": PO_TOKEN,
            "SECRET_CRM_TOKEN": CRM_TOKEN,
            "REQUEUE_AFTER_SECONDS": str(REQUEUE_AFTER_SECONDS),
            "RETRY_BASE_SECONDS": "0.2",
            "MAX_ATTEMPTS": "5",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
        if redis:
            self.env.update(redis.environment())  # a queue of this test's own (tests/redis_space.py)
        self.database_url = database_url
        self.redis = redis
        self.processes: list[Proc] = []
        self.serve: Proc | None = None
        self.workers: list[Proc] = []
        self._store: Store | None = None
        self.http = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100))

    # processes

    def _start(self, kind: str, *args: str, preexec_fn: Callable[[], None] | None = None) -> Proc:
        count = sum(p.name.startswith(kind) for p in self.processes)
        proc = Proc(f"{kind}-{count + 1}", list(args), self.env, self.logs, self.root, preexec_fn)
        self.processes.append(proc)
        return proc

    async def start_serve(self, preexec_fn: Callable[[], None] | None = None) -> Proc:
        """`serve`, once ready; `preexec_fn` runs in the child before it starts (e.g. to set limits)."""
        self.serve = self._start("serve", "serve", "--port", "0", preexec_fn=preexec_fn)
        # It says so once its store, queue and rules are open: as long as /healthz took before.
        address = await self.serve.announced("listening on ", within=40)
        self.url, self.port = address, int(address.rsplit(":", 1)[1])
        await self.wait_ready()
        return self.serve

    def start_worker(self, metrics_port_option: bool = True) -> Proc:
        """A worker, with `--metrics-port 0` (a port of its choosing) by default; see `wait_workers`."""
        worker = self._start("worker", "worker", *(["--metrics-port", "0"] if metrics_port_option else []))
        self.workers.append(worker)
        return worker

    async def wait_workers(self, within: float = 20.0) -> None:
        """Poll every worker's metrics endpoint, the address it logged, until it answers."""
        for worker in self.workers:
            if not worker.metrics_url:
                worker.metrics_url = await worker.announced("metrics on ", within)

            async def answers(worker: Proc = worker) -> bool | None:
                if not worker.alive():
                    pytest.fail(f"{worker.name} exited with {worker.popen.returncode}:\n{worker.log()}")
                try:
                    response = await self.http.get(worker.metrics_url, timeout=1)
                except httpx.TransportError:
                    return None
                return True if response.status_code == 200 else None

            await eventually(answers, within, f"{worker.name} never answered on its metrics port")

    async def wait_ready(self, within: float = 20.0) -> None:
        """Poll /healthz until the receiver answers, then /readyz until store, queue and rules are ok."""
        assert self.serve is not None

        async def answers(path: str) -> bool | None:
            assert self.serve is not None
            if not self.serve.alive():
                pytest.fail(
                    f"{self.serve.name} exited with {self.serve.popen.returncode}:\n{self.serve.log()}"
                )
            try:
                response = await self.http.get(self.url + path, timeout=1)
            except httpx.TransportError:
                return None
            return True if response.status_code == 200 else None

        await eventually(lambda: answers("/healthz"), within, "serve never answered /healthz")
        await eventually(lambda: answers("/readyz"), within, "serve never became ready (/readyz)")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A `stockaj-rules` command against this deployment, as an operator would type it."""
        done = subprocess.run(
            [CLI, *args], env=self.env, cwd=self.root, capture_output=True, text=True, timeout=30
        )
        if check and done.returncode != 0:
            pytest.fail(f"stockaj-rules {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
        return done

    def dump_logs(self) -> None:
        for proc in self.processes:
            print(f"\n===== {proc.name} (pid {proc.pid}, exit {proc.popen.poll()}) =====\n{proc.log()}")

    async def close(self) -> None:
        stopping = [p for p in self.processes if p.alive()]
        for proc in stopping:
            proc.popen.send_signal(signal.SIGTERM)
        for proc in stopping:
            proc.wait(15)
        await self.http.aclose()
        if self._store is not None:
            await self._store.engine.dispose()

    # deliveries

    async def post(self, delivery_id: str, payload: dict[str, Any]) -> httpx.Response:
        """POST a delivery signed exactly as Stockaj signs it."""
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: str(payload["event"]),
            DELIVERY_HEADER: delivery_id,
            SIGNATURE_HEADER: sign(body, SECRET),
        }
        return await self.http.post(self.url + "/webhooks/stockaj", content=body, headers=headers)

    async def accept(self, delivery_id: str, payload: dict[str, Any]) -> None:
        """Post a new delivery and check it was stored (not a duplicate)."""
        response = await self.post(delivery_id, payload)
        assert response.status_code == 200, response.text
        assert response.json() == {"received": True, "duplicate": False, "delivery_id": delivery_id}

    # the store

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(database.create_engine(self.database_url))
        return self._store

    async def finished(self, delivery_ids: Iterable[str], within: float = 20.0) -> dict[str, StoredDelivery]:
        """Wait until every delivery is done, failed or no_match; their rows."""
        wanted = list(delivery_ids)
        deadline = time.monotonic() + within
        while True:
            rows = {delivery_id: await self.store.get(delivery_id) for delivery_id in wanted}
            finished = {k: row for k, row in rows.items() if row is not None and row.status in FINISHED}
            if len(finished) == len(wanted):
                return finished
            if time.monotonic() > deadline:
                waiting = {k: row.status.value if row else "not stored" for k, row in rows.items()}
                pytest.fail(
                    f"after {within:g}s, not finished: "
                    + ", ".join(f"{k}={v}" for k, v in waiting.items() if k not in finished)
                )
            await asyncio.sleep(0.05)

    async def ledger(self, delivery_id: str) -> dict[tuple[str, int], ActionRun]:
        return await self.store.action_runs(delivery_id)


TOPOLOGIES = [
    pytest.param("embedded", id="embedded"),
    pytest.param("distributed", id="distributed", marks=[pytest.mark.postgres, pytest.mark.redis]),
]


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, RedisSpace | None]:
    """The DATABASE_URL and the Redis queue of the topology; the real services for `distributed`."""
    if request.param == "embedded":
        return f"sqlite+aiosqlite:///{tmp_path / 'stockaj-rules.db'}", None
    # Migrated already, as `stockaj-rules db upgrade` leaves it (tests/cli/test_cli_ops.py runs that).
    return request.getfixturevalue("migrated_postgres_url"), request.getfixturevalue("redis_space")


@pytest.fixture
async def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, sink: Sink, topology: tuple[str, RedisSpace | None]
) -> AsyncIterator[Deployment]:
    """A running installation: `serve` alone (embedded), or `serve` and two workers (distributed)."""
    database_url, redis = topology
    deployed = Deployment(tmp_path, sink, database_url, redis)
    try:
        if redis:
            deployed.start_worker()
            deployed.start_worker()
        await deployed.start_serve()
        await deployed.wait_workers()
        yield deployed
    finally:
        failed = request.node.stash.get(FAILED, True)
        await deployed.close()
        if failed:
            deployed.dump_logs()
    crashed = [proc.name for proc in deployed.processes if "Traceback" in proc.log()]
    if crashed:
        deployed.dump_logs()
        pytest.fail(f"a traceback in the log of {', '.join(crashed)}")
    secrets = (SECRET, CRM_TOKEN, PO_TOKEN, SLACK_PATH.rsplit("/", 1)[1])
    leaked = [proc.name for proc in deployed.processes if any(value in proc.log() for value in secrets)]
    if leaked:
        pytest.fail(f"a secret value in the log of {', '.join(leaked)}")


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" or (report.when == "setup" and report.failed):
        item.stash[FAILED] = report.failed
    return report
