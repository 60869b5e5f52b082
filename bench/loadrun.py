"""What `bench_receiver.py` runs its load with: processes, wrk, CPU accounting, profiles, services.

Server processes start in their own session and stop with SIGTERM to their
group (SIGKILL if they hang); wrk runs are bounded; CPU is read from /proc for
our processes, PostgreSQL, Redis and the machine, so a run says how much of
the two cores others used meanwhile. PostgreSQL databases are created fresh
and dropped; Redis databases are leased as tests/conftest.py leases them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import workload

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
APPS = BENCH / "receiver_apps"
BIN = Path(sys.executable).parent
PYTHON = sys.executable
WEBHOOK = "/webhooks/stockaj"
HOST = "127.0.0.1"
PG_ADMIN = ["psql", "-h", HOST, "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
REDIS_BASE = f"redis://{HOST}:6379"


def sign(body: bytes, secret: str) -> str:
    """Stockaj's signature, hex HMAC-SHA256 of the body (as engine.signing.sign; not imported, so a
    half-edited working tree cannot break the load generator)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def snapshot(commit: str, into: Path) -> tuple[Path, str]:
    """engine/ and actions/ at `commit`, exported with `git archive` (the repository is not touched)."""
    into.mkdir(parents=True, exist_ok=True)
    full = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", commit], capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", full, "engine", "actions"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into, full


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    """A server process in its own session; stopped with SIGTERM to its group, SIGKILL if it hangs."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, grace: float = 20.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"  {self.name} did not stop within {grace:g}s: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # whatever it left in its group
        self.popen.wait(5)
        self._log.close()


def http_get(port: int, path: str, timeout: float = 2.0) -> int:
    """Status of a plain GET (no client library: nothing to configure, no proxy)."""
    with socket.create_connection((HOST, port), timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(4096)
    return int(head.split(b" ", 2)[1])


def wait_ready(procs: list[Proc], port: int, path: str = "/healthz", timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.tail()}")
        with contextlib.suppress(OSError, IndexError, ValueError):
            if http_get(port, path) == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{procs[0].name} not ready on port {port} within {timeout:g}s:\n{procs[0].tail()}")


def server_command(server: str, target: str, port: int) -> list[str]:
    if server in ("uvicorn", "uvicorn-bounded"):
        # uvicorn-bounded: the same, through the receiver's connection protocol (its default
        # limits), to measure what the protocol costs side by side with plain httptools.
        http = (
            "engine.pipeline.http_protocol:BoundedHttpToolsProtocol"
            if server == "uvicorn-bounded"
            else "httptools"
        )
        return [
            PYTHON, "-m", "uvicorn", target, "--host", HOST, "--port", str(port),
            "--loop", "uvloop", "--http", http, "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    if server == "granian":
        return [
            str(BIN / "granian"), "--interface", "asgi", "--loop", "uvloop", "--http", "1", "--no-ws",
            "--workers", "1", "--log-level", "warning", "--host", HOST, "--port", str(port), target,
        ]  # fmt: skip
    if server == "hypercorn":
        return [
            PYTHON, "-m", "hypercorn", "-k", "uvloop", "--bind", f"{HOST}:{port}",
            "--log-level", "warning", target,
        ]  # fmt: skip
    raise ValueError(server)


@dataclass
class Load:
    """What wrk reported for one timed run (latencies in milliseconds)."""

    requests: int
    seconds: float
    errors: int
    non_2xx: int
    p50: float
    p90: float
    p99: float
    max: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@dataclass
class Workspace:
    root: Path
    body_file: Path
    signature: str
    threads: int
    connections: int
    warmup: float
    duration: float
    code: Path = ROOT  # where engine/ and actions/ are imported from (a `--commit` snapshot or the tree)
    redis_index: int | None = None
    e2e_workers: int = 1
    profile_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


def run_wrk(ws: Workspace, port: int, seconds: float, prefix: str) -> Load:
    cmd = [
        "wrk", f"-t{ws.threads}", f"-c{ws.connections}", f"-d{seconds:g}s", "--timeout", "10s",
        "-s", str(APPS / "delivery.lua"), f"http://{HOST}:{port}{WEBHOOK}",
        "--", str(ws.body_file), ws.signature, prefix,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-800:]} {done.stderr[-800:]}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    return Load(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        non_2xx=raw["status"],
        p50=raw["p50"] / 1000,
        p90=raw["p90"] / 1000,
        p99=raw["p99"] / 1000,
        max=raw["max"] / 1000,
    )


def post_one(port: int, ws: Workspace, delivery_id: str) -> int:
    """One signed delivery by hand, before the load: proves the signature and the route."""
    body = ws.body_file.read_bytes()
    head = (
        f"POST {WEBHOOK} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Stockaj-Event: {workload.EVENT}\r\n"
        f"X-Stockaj-Signature: {ws.signature}\r\nX-Stockaj-Delivery: {delivery_id}\r\n"
        "Connection: close\r\n\r\n"
    )
    with socket.create_connection((HOST, port), 30) as sock:
        sock.sendall(head.encode() + body)
        answer = sock.recv(4096)
    return int(answer.split(b" ", 2)[1])


@contextlib.contextmanager
def redis_database(index: int) -> Iterator[int]:
    """Lease a Redis database as tests/conftest.py does (key in db 0), so tests beside us skip it."""
    import redis

    leases = redis.Redis.from_url(f"{REDIS_BASE}/0")
    owner = f"bench-receiver-{uuid.uuid4().hex}"
    chosen = None
    for candidate in [index, *[i for i in range(15, 0, -1) if i != index]]:
        if leases.set(f"stockaj-test-lease:{candidate}", owner, nx=True, ex=3600):
            chosen = candidate
            break
    if chosen is None:
        raise RuntimeError("no free Redis database (1-15): tests hold them all; try again later")
    if chosen != index:
        log(f"Redis database {index} is leased by a test run; using {chosen}")
    try:
        flush_redis(chosen)
        yield chosen
    finally:
        flush_redis(chosen)
        if leases.get(f"stockaj-test-lease:{chosen}") == owner.encode():
            leases.delete(f"stockaj-test-lease:{chosen}")
        leases.close()


def flush_redis(index: int) -> None:
    import redis

    client = redis.Redis.from_url(f"{REDIS_BASE}/{index}")
    client.flushdb()
    client.close()


def psql(sql: str, database: str = "postgres") -> str:
    done = subprocess.run(
        [*PG_ADMIN, "-d", database, "-tAc", sql], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql failed: {sql}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def postgres_database(ws: Workspace) -> Iterator[str]:
    """A fresh database, upgraded by `stockaj-rules db upgrade`; dropped on the way out."""
    name = f"stockaj_bench_{uuid.uuid4().hex[:12]}"
    psql(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@{HOST}:5432/{name}"
    try:
        env = {**ws.env, "PYTHONPATH": str(ws.code), "DATABASE_URL": url}
        done = subprocess.run(
            [str(BIN / "stockaj-rules"), "db", "upgrade"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"stockaj-rules db upgrade failed: {done.stderr.strip()[-800:]}")
        yield name
    finally:
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def count_sqlite(path: Path, table: str = "deliveries") -> int:
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        count: int = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return count


def status_counts_sqlite(path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        return dict(db.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall())


def status_counts_postgres(database: str) -> dict[str, int]:
    out = psql("SELECT status, count(*) FROM deliveries GROUP BY status", database)
    return {line.split("|")[0]: int(line.split("|")[1]) for line in out.splitlines() if line}


PROFILE_RATE = 200
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _machine_busy_ticks() -> int:
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def cpu_snapshot(groups: set[int]) -> dict[str, float]:
    """CPU seconds so far: our server processes (by process group), PostgreSQL, Redis, the machine."""
    totals = {"server": 0, "postgres": 0, "redis": 0}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])
        if int(fields[2]) in groups:
            totals["server"] += ticks
        elif comm == "postgres":
            totals["postgres"] += ticks
        elif comm.startswith("redis-server"):
            totals["redis"] += ticks
    totals["machine"] = _machine_busy_ticks()
    return {name: ticks / CLK_TCK for name, ticks in totals.items()}


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds one process has used so far, all its threads; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy(seconds: float = 1.0) -> float:
    """Cores busy machine-wide over the next `seconds`."""
    before, total_before = _machine_busy_ticks(), _machine_total_ticks()
    time.sleep(seconds)
    total = _machine_total_ticks() - total_before
    return (_machine_busy_ticks() - before) / total * (os.cpu_count() or 1) if total else 0.0


def _machine_total_ticks() -> int:
    with open("/proc/stat") as stat:
        return sum(int(x) for x in stat.readline().split()[1:])


def wait_quiet(limit: float, timeout: float) -> float:
    """Wait (at most `timeout` s) for two quiet seconds in a row: other work skews every figure.

    Returns the seconds waited; logs when the machine never went quiet.
    """
    started = time.monotonic()
    quiet = 0
    while time.monotonic() - started < timeout:
        busy = machine_busy(1.0)
        quiet = quiet + 1 if busy <= limit else 0
        if quiet >= 2:
            return time.monotonic() - started
    log(f"  the machine stayed busy (last {busy:.2f} cores) for {timeout:g} s; running anyway")
    return time.monotonic() - started


def other_cores(cpu: dict[str, float]) -> float:
    """Cores that neither our processes, PostgreSQL, Redis nor wrk used: someone else's work."""
    ours = sum(value for name, value in cpu.items() if name != "machine")
    return max(0.0, cpu.get("machine", 0.0) - ours)


def cpu_between(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Average cores busy over the interval, per part."""
    return {name: (after[name] - before[name]) / seconds for name in before}


def start_profilers(
    procs: list[Proc], folder: Path, tag: str, seconds: float
) -> list[subprocess.Popen[bytes]]:
    """py-spy on each of our processes (no blocking, so the process is not paused), collapsed stacks."""
    return [
        subprocess.Popen(
            [
                str(BIN / "py-spy"),
                "record",
                "--pid",
                str(proc.pid),
                "--rate",
                str(PROFILE_RATE),
                "--nonblocking",
                "--threads",
                "--format",
                "raw",
                "--output",
                str(folder / f"{tag}-{proc.name}.txt"),
                "--duration",
                str(max(1, int(seconds))),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for proc in procs
    ]


def stop_profilers(profilers: list[subprocess.Popen[bytes]], wait: bool) -> None:
    for profiler in profilers:
        if not wait and profiler.poll() is None:
            profiler.terminate()
        try:
            profiler.wait(60)
        except subprocess.TimeoutExpired:
            profiler.kill()
            profiler.wait(5)


def profile_summary(path: Path, seconds: float, top: int = 22) -> str:
    """Where a process spent its time, from py-spy's collapsed stacks (`--threads`, idle left out).

    Shares are of one core over the recording (samples / (rate x seconds)), so
    they add up to the cores the process kept busy, per thread.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        threads[thread.split(" ")[0] + " " + thread.split(" ")[-1]] += count
        names = [f.split(" (")[0] + " " + _short_file(f) for f in frames] or [thread]
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    scale = 1 / (PROFILE_RATE * seconds)
    lines = [f"{path.name}: busy {sum(threads.values()) * scale:.2f} cores"]
    lines += [f"  thread {name}: {n * scale:.2f}" for name, n in threads.most_common(4)]
    lines.append("  self:")
    lines += [f"    {n * scale:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {n * scale:6.1%}  {name}" for name, n in inclusive.most_common(top + 10)]
    return "\n".join(lines)


def _short_file(frame: str) -> str:
    if " (" not in frame:
        return ""
    where = frame.split(" (", 1)[1].rstrip(")")
    for marker in ("site-packages/", f"{Path(__file__).resolve().parents[1]}/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"({where})"
