"""scripts/run, the README's command that runs the engine: the development secret stays local."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("env", "args"),
    [({"HOST": "0.0.0.0"}, []), ({}, ["--host", "0.0.0.0"]), ({}, ["--host=192.0.2.1"])],
    ids=["HOST", "--host", "--host="],
)
def test_scripts_run_refuses_the_development_secret_on_an_address_others_reach(
    env: dict[str, str], args: list[str]
) -> None:
    environment = {k: v for k, v in os.environ.items() if k not in ("STOCKAJ_WEBHOOK_SECRET", "HOST")}
    # Were it not refused, serve would start: the timeout ends the test instead of hanging it.
    completed = subprocess.run(
        [str(REPO / "scripts" / "run"), "--port", str(_free_port()), *args],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert completed.returncode == 2
    host = env.get("HOST") or args[-1].removeprefix("--host=")
    assert completed.stderr.splitlines()[-1] == (
        f"STOCKAJ_WEBHOOK_SECRET is not set, and {host} is reachable from other machines: "
        "set it to the secret configured in Stockaj (the development secret is for 127.0.0.1 only)"
    )


def test_setup_venv_says_what_it_installs_before_the_long_silent_pip_install(tmp_path: Path) -> None:
    # A copy of the project whose .venv's python only records what it is asked: no real install.
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup-venv").write_bytes((REPO / "scripts" / "setup-venv").read_bytes())
    (tmp_path / "scripts" / "setup-venv").chmod(0o755)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "python $*" >> "$(dirname "$0")/../calls"\n')
    fake.chmod(0o755)

    completed = subprocess.run(
        [str(tmp_path / "scripts" / "setup-venv")], capture_output=True, text=True, timeout=30, check=False
    )
    again = subprocess.run(
        [str(tmp_path / "scripts" / "setup-venv")], capture_output=True, text=True, timeout=30, check=False
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.startswith("installing stockaj-rules and its dependencies into .venv"), (
        completed.stderr
    )
    assert "pip install" in (tmp_path / ".venv" / "calls").read_text()
    assert (again.returncode, again.stdout, again.stderr) == (0, "", ""), "nothing to install: silent"
