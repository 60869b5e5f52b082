"""What `serve` and `worker` say when they start and stop, as a terminal shows it.

Each test runs the installed console script in a subprocess, as an operator's
shell does, and reads its output as it comes.
"""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.cli.test_cli_ops import WEBHOOK_SECRET, _console_script, _free_port, _process_env, one_line, shell
from tests.redis_space import RedisSpace

STARTUP_SECONDS = 30


class Output:
    """A process's stderr, line by line, read in a thread so that a test can wait for a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert process.stderr is not None
        self._stream = process.stderr
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def close(self) -> None:
        """Once the process has exited: the reader is at the end, the pipe closed."""
        self._reader.join(10)
        self._stream.close()

    def wait_for(self, text: str, seconds: float = STARTUP_SECONDS) -> str:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        pytest.fail(f"no line with {text!r} within {seconds} s; the output was:\n" + "\n".join(self.lines))

    def rest(self, seconds: float = STARTUP_SECONDS) -> str:
        """Every line until the stream ends (the process exited)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            line = self._queue.get(timeout=left)
            if line is None:
                return "\n".join(self.lines)
            self.lines.append(line)
        pytest.fail("the process did not end")


@contextmanager
def started(*args: str, env: dict[str, str], cwd: Path) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    process = subprocess.Popen(
        [_console_script(), *args],
        env=_process_env(env),
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = Output(process)
    try:
        yield process, output
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        output.close()


def serve_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "rules").mkdir(exist_ok=True)
    return {
        "STOCKAJ_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RULES_DIR": str(tmp_path / "rules"),
        "LOG_FORMAT": "console",
    }


def test_serve_says_where_it_listens_once_it_answers_there(tmp_path: Path) -> None:
    port = _free_port()

    with started("serve", "--port", str(port), env=serve_env(tmp_path), cwd=tmp_path) as (_, output):
        line = output.wait_for("listening on")
        answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)

    assert line.split("]", 1)[1].strip().startswith(f"listening on http://127.0.0.1:{port}"), line
    assert answer.status_code == 200


def test_serve_on_an_ipv6_address_writes_it_in_brackets(tmp_path: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")

    with started("serve", "--host", "::1", "--port", str(port), env=serve_env(tmp_path), cwd=tmp_path) as (
        _,
        output,
    ):
        line = output.wait_for("listening on")

    assert f"listening on http://[::1]:{port}" in line


def test_ctrl_c_stops_serve_cleanly_with_exit_0_and_no_aborted(tmp_path: Path) -> None:
    with started("serve", "--port", str(_free_port()), env=serve_env(tmp_path), cwd=tmp_path) as (
        process,
        output,
    ):
        output.wait_for("listening on")
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends to the terminal's foreground process
        stderr = output.rest()
        code = process.wait(STARTUP_SECONDS)

    assert code == 0, stderr
    assert "Aborted" not in stderr
    assert "Traceback" not in stderr
    assert "stopped: the deliveries in hand are finished" in stderr


def test_worker_with_redis_down_is_one_line_at_once_without_retry_warnings(tmp_path: Path) -> None:
    env = {"REDIS_URL": f"redis://:redis-pa55word@127.0.0.1:{_free_port()}/0", "RULES_DIR": str(tmp_path)}

    completed = shell("worker", env=env, cwd=tmp_path)

    assert completed.returncode == 2
    line = one_line(completed.stderr)  # nothing before it: no arq retries, no "stopped: ..."
    assert line.startswith("configuration error: cannot reach REDIS_URL (redis://:***@127.0.0.1:"), line
    assert line.endswith("; start Redis or fix REDIS_URL")
    assert "pa55word" not in completed.stderr


@pytest.mark.redis
def test_worker_whose_metrics_port_is_taken_says_which_port_and_what_to_do(
    tmp_path: Path, redis_space: RedisSpace
) -> None:
    env = {
        **redis_space.environment(),
        "RULES_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'w.db'}",
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        completed = shell("worker", "--metrics-port", str(port), env=env, cwd=tmp_path)

    assert completed.returncode == 2
    assert one_line(completed.stderr) == (
        f"configuration error: cannot serve the worker's metrics on 127.0.0.1:{port}: Address already "
        "in use; choose another --metrics-port (or METRICS_PORT), or stop the process that uses it"
    )


def test_serve_with_its_console_names_the_console_and_no_metrics_port_it_does_not_have(
    tmp_path: Path,
) -> None:
    port, console_port = _free_port(), _free_port()
    env = {**serve_env(tmp_path), "CONSOLE_PORT": str(console_port)}

    with started("serve", "--port", str(port), env=env, cwd=tmp_path) as (_, output):
        output.wait_for("listening on")
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    said = "\n".join(output.lines) + "\n" + output.rest()  # every line, up to its exit

    assert f"console at http://127.0.0.1:{console_port}/" in said, said
    assert "metrics on" not in said, said  # METRICS_PORT is not set
