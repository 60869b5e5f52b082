"""Serving the console: `serve` in the embedded default says where; refusals are one line, exit 2."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from tests.console.browser_harness import CLI, Installation, free_port, wait_for

RULE = "id: r\non: item.low_stock\nactions: [{type: log, message: m}]\n"


def test_serve_serves_the_console_and_says_where(tmp_path: Path) -> None:
    installation = Installation(tmp_path, {"r.yaml": RULE})
    try:
        installation.serve()
        answer = httpx.get(f"{installation.console}/login")
        assert answer.status_code == 200
        assert "script-src 'self'" in answer.headers["Content-Security-Policy"]
        # The receiver's port does not serve the console, nor the console's the receiver.
        assert httpx.get(f"http://127.0.0.1:{installation.port}/login").status_code == 404
        assert httpx.get(f"{installation.console}/readyz").status_code in (302, 404)
    finally:
        logs = installation.stop()
    assert f"console at http://127.0.0.1:{installation.console_port}/" in logs


def test_serve_goes_on_without_the_console_when_its_port_is_taken(tmp_path: Path) -> None:
    installation = Installation(tmp_path, {"r.yaml": RULE})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", installation.console_port))
        taken.listen()
        try:
            installation.start("serve", "--port", str(installation.port))
            wait_for(f"http://127.0.0.1:{installation.port}/healthz")
        finally:
            logs = installation.stop()
    assert "the console is not served: cannot listen on 127.0.0.1" in logs


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    installation = Installation(tmp_path, {"r.yaml": RULE}, **env)
    environment = {k: v for k, v in installation.env.items() if k != "CONSOLE_PASSWORD"}
    return subprocess.run(
        [CLI, *args], env=environment, capture_output=True, text=True, timeout=60, check=False
    )


def test_serve_refuses_a_console_beyond_loopback_without_a_password(tmp_path: Path) -> None:
    done = run(tmp_path, "serve", "--port", str(free_port()), CONSOLE_HOST="0.0.0.0")

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "the console would listen on 0.0.0.0, beyond this machine, without a password" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_console_command_refuses_beyond_loopback_without_a_password(tmp_path: Path) -> None:
    done = run(tmp_path, "console", "--host", "0.0.0.0", "--port", str(free_port()))

    assert done.returncode == 2
    assert "set CONSOLE_PASSWORD" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_the_console_command_serves_alone(tmp_path: Path) -> None:
    installation = Installation(tmp_path, {"r.yaml": RULE})
    port = free_port()
    installation.start("console", "--port", str(port))
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz")
        started = time.monotonic()
        answer = httpx.get(f"http://127.0.0.1:{port}/", follow_redirects=False)
        assert (answer.status_code, answer.headers["Location"]) == (302, "/login?next=/")
        assert time.monotonic() - started < 5
    finally:
        logs = installation.stop()
    assert f"console at http://127.0.0.1:{port}/" in logs


def test_scripts_run_prints_the_console_s_address(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    port, console_port = free_port(), free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKAJ_", "CONSOLE_", "HOST"))}
    environment |= {
        "CONSOLE_PORT": str(console_port),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 's.db'}",
    }
    process = subprocess.Popen(
        [str(repo / "scripts" / "run"), "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=repo,
    )
    try:
        wait_for(f"http://127.0.0.1:{console_port}/healthz", 60)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert (
        f"Open the console (the delivery log, the rules, the playground) in a browser:\n  http://127.0.0.1:{console_port}/"
        in stderr
    )
