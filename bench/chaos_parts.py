"""The parts the chaos soak runs and breaks: supervised processes, its own Redis, its own database.

- `Supervised`: one `stockaj-rules` process (or the sink) that is restarted when
  it exits on its own, as systemd's `Restart=always` would, and counted.
- `RedisServer`: a `redis-server` on a free port of 127.0.0.1, without
  persistence, that the soak may kill, restart and FLUSHALL.
- `SoakDatabase`: a PostgreSQL database made for one run (`stockaj_soak_<hex>`),
  whose sessions can be terminated, dropped at the end.
- `Run`: one shape's processes, rules folder and settings, and the kills and faults
  made so far.
- `sink_ports`: the local ports of a process's open connections to the sink,
  read from /proc just before it is killed, so that a request that came on one of
  them is known to have been in that process's hands.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis
from chaos_load import write_rules
from chaos_report import Kill

BIN = Path(sys.executable).parent
CLI = str(BIN / "stockaj-rules")
HOST = "127.0.0.1"
SECRET = "chaos-soak-webhook-secret-5e1f0c2a9b7d"
REQUEUE_AFTER_SECONDS = 5.0
PG_ADMIN_DSN = os.environ.get("SOAK_POSTGRES_ADMIN", f"postgresql://postgres@{HOST}:5432/postgres")


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Supervised:
    """A process restarted when it exits by itself; `kill` makes an exit the soak meant."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.env = env
        self.log_path = logs / f"{name}.log"
        self.unexpected_exits: list[int] = []
        self.kills = 0
        self.popen: subprocess.Popen[bytes] | None = None
        self.held = False
        self.start()

    def start(self) -> None:
        self.held = False
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                self.cmd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def restart_if_exited(self) -> None:
        """Restart after an exit the soak did not cause (and remember its code)."""
        if not self.held and self.popen is not None and self.popen.poll() is not None:
            code = self.popen.returncode
            self.unexpected_exits.append(code)
            log(f"{self.name} (pid {self.pid}) exited by itself with {code}: restarted")
            self.start()

    def freeze(self) -> None:
        """SIGSTOP: it opens no connection and sends nothing more until killed (by `kill`, next)."""
        self.held = True  # from now on its exit is the soak's doing: not for `restart_if_exited`
        if self.popen is not None and self.alive():
            self.popen.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL, and wait for it; it stays down until `start`."""
        self.held = True
        if self.popen is not None and self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)
        self.kills += 1

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code."""
        if self.popen is None:
            return None
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)


class RedisServer:
    """A redis-server of the soak's own, on a free port, keeping nothing on disk."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://{HOST}:{self.port}/0"
        self.popen: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")]
        self.popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not answer within 10 s"
                    ) from None
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def flushall(self) -> None:
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class SoakDatabase:
    """A PostgreSQL database of the run's own; only its sessions are ever terminated."""

    def __init__(self) -> None:
        self.name = f"stockaj_soak_{uuid.uuid4().hex[:10]}"
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        self.url = f"{base}/{self.name}"

    async def create(self) -> None:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await admin.close()

    async def terminate_sessions(self) -> int:
        """pg_terminate_backend of every session on the soak's database; how many."""
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            count: int = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                self.name,
            )
            return count
        finally:
            await admin.close()

    async def drop(self) -> None:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await admin.close()


def sink_ports(pid: int, sink_port: int) -> set[int]:
    """Local ports of `pid`'s TCP connections to 127.0.0.1:`sink_port` (Linux /proc)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == sink_port:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class Run:
    """One shape's processes, its sink's record, the kills and faults so far."""

    def __init__(
        self, shape: str, work: Path, sink_port: int, database_url: str, redis_url: str | None
    ) -> None:
        self.shape = shape
        self.secret = SECRET
        self.work = work
        self.sink_port = sink_port
        self.rules_dir = work / "rules"
        self.rules_dir.mkdir(parents=True)
        self.logs = work / "logs"
        self.logs.mkdir()
        self.generation = 0
        write_rules(self.rules_dir, sink_port, self.generation)
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work),
            "LANG": "C.UTF-8",
            "STOCKAJ_WEBHOOK_SECRET": self.secret,
            "DATABASE_URL": database_url,
            "RULES_DIR": str(self.rules_dir),
            "HOST": HOST,
            "PORT": str(self.port),
            "REQUEUE_AFTER_SECONDS": str(REQUEUE_AFTER_SECONDS),
            "RETRY_BASE_SECONDS": "0.5",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.processes: dict[str, Supervised] = {}
        self.kills: list[Kill] = []
        self.faults: list[dict[str, Any]] = []

    def start(self, name: str, *args: str) -> Supervised:
        self.processes[name] = Supervised(name, [CLI, *args], self.env, self.logs)
        return self.processes[name]

    async def supervise(self) -> None:
        """Restart what exits by itself, twice a second, until cancelled."""
        while True:
            for process in self.processes.values():
                process.restart_if_exited()
            await asyncio.sleep(0.5)

    async def wait_ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                try:
                    if (await client.get(self.url + "/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.shape}: serve not ready within {within:g}s; see {self.logs}")
                await asyncio.sleep(0.2)

    async def kill_and_restart(self, name: str, down_seconds: float) -> str:
        """SIGKILL `name`, noting its connections to the sink; start it again after `down_seconds`."""
        process = self.processes[name]
        process.freeze()  # so that the connections read next are all it has when it dies
        ports = frozenset(sink_ports(process.pid, self.sink_port))
        self.kills.append(Kill(name, time.time(), ports))
        await asyncio.to_thread(process.kill)
        await asyncio.sleep(down_seconds)
        process.start()
        return f"SIGKILL {name} ({len(ports)} connections to the sink open), restarted"

    def reload_rules(self) -> str:
        self.generation += 1
        write_rules(self.rules_dir, self.sink_port, self.generation)
        return f"rule file rewritten atomically (generation {self.generation})"

    def stop(self) -> dict[str, int | None]:
        return {name: process.stop() for name, process in self.processes.items()}
