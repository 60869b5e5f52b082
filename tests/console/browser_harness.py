"""The browser tests' world: a real `serve` with its console, a sink, Debian's chromium.

- `Installation`: one `stockaj-rules serve` process in the embedded default (SQLite, the
  in-process worker), its console on a port of its own, its rules folder, and signed posts.
- `chromium_path()`: Debian's chromium, or a skip with the reason (a failure under CI=true).
- `HostilePage`: a page on another origin (another port), holding a form that posts to the
  console, as a site the operator visits while logged in would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign

CLI = str(Path(sys.executable).with_name("stockaj-rules"))
SECRET = "browser-webhook-secret-1"
PASSWORD = "browser-console-pw-1"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is not None:
        return found
    message = "Debian's chromium is not installed (apt-get install chromium; scripts/test does it as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must run the browser tests")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


class Installation:
    """`serve` (receiver, in-process worker and console) on a fresh SQLite store."""

    def __init__(self, root: Path, rules: dict[str, str], **env: str) -> None:
        self.root = root
        self.rules_dir = root / "rules"
        self.rules_dir.mkdir(parents=True)
        for name, text in rules.items():
            (self.rules_dir / name).write_text(text)
        (root / "fixtures").mkdir()
        self.port, self.console_port = free_port(), free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SECRET_", "CONSOLE_"))},
            "STOCKAJ_WEBHOOK_SECRET": SECRET,
            "DATABASE_URL": f"sqlite+aiosqlite:///{root / 'store.db'}",
            "RULES_DIR": str(self.rules_dir),
            "CONSOLE_PORT": str(self.console_port),
            "CONSOLE_PASSWORD": PASSWORD,
            "CONSOLE_RULES_WRITABLE": "true",
            "CONSOLE_FIXTURES_DIR": str(root / "fixtures"),
            "MAX_ATTEMPTS": "1",
            "LOG_FORMAT": "json",
            "REQUEUE_AFTER_SECONDS": "5",
            **env,
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    @property
    def console(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"

    def start(self, *command: str, **env: str) -> subprocess.Popen[bytes]:
        log = self.root / f"process-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [CLI, *command], env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=self.root
            )
        self.processes.append(process)
        return process

    def serve(self) -> None:
        self.start("serve", "--port", str(self.port))
        wait_for(f"http://127.0.0.1:{self.port}/healthz")
        wait_for(f"{self.console}/healthz")

    def send(self, payload: dict[str, Any], delivery_id: str | None = None, **headers: str) -> str:
        delivery_id = delivery_id or str(uuid.uuid4())
        body = json.dumps(payload).encode()
        answer = httpx.post(
            f"http://127.0.0.1:{self.port}/webhooks/stockaj",
            content=body,
            headers={
                "Content-Type": "application/json",
                EVENT_HEADER: str(payload["event"]),
                DELIVERY_HEADER: delivery_id,
                SIGNATURE_HEADER: sign(body, SECRET),
                **headers,
            },
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return delivery_id

    def status(self, delivery_id: str) -> str:
        with closing(sqlite3.connect(self.root / "store.db", timeout=30)) as db:
            row = db.execute("SELECT status FROM deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()
        return str(row[0]) if row else "unknown"

    def wait_finished(self, delivery_id: str, seconds: float = 20) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            status = self.status(delivery_id)
            if status in ("done", "failed", "no_match"):
                return status
            time.sleep(0.2)
        raise TimeoutError(f"{delivery_id} still {self.status(delivery_id)} after {seconds} s")

    def stop(self) -> str:
        """Stop every process; their logs, for a failing test's report."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}" for log in self.logs)


class HostilePage:
    """Another origin's page: a form that posts to the console (no token, its own origin)."""

    def __init__(self, target: str, fields: dict[str, str]) -> None:
        inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
        page = f'<html><body><form method="post" action="{target}">{inputs}<button id="go">win a prize</button></form></body></html>'

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def hostile_page(target: str, fields: dict[str, str]) -> Iterator[HostilePage]:
    page = HostilePage(target, fields)
    try:
        yield page
    finally:
        page.close()
