"""`stockaj-rules check` on ./rules: an older commit against this checkout, side by side.

Each round runs, in an order that rotates every round so that noise hits them alike:

- old check: `stockaj-rules check --rules rules` of the older commit (default d1c82c9,
  before the rule author's commands stopped importing the server stack),
- new check: the same command of this checkout,
- old import / new import: `python -c 'import engine.cli.main'` of each,
- rule modules: this checkout's `actions.registry` and `engine.language.loader` alone,
  what `check` cannot do without.

Every command is a fresh process, as a rule author's shell starts it, with an environment
holding no engine setting (a rule author's). Each is timed on the wall clock and in CPU time
(user + system, from the children's rusage): on a machine shared with other work the wall
time follows the load, the CPU time much less. The older commit is checked out in a
temporary `git worktree` with its own .venv (`scripts/setup-venv`, ~30 s), removed at the
end; `--old-checkout PATH` uses an existing checkout instead (its .venv must exist).

Run: `.venv/bin/python bench/bench_cli_start.py` (~1 min plus the set-up); `--rounds 5`
for a smoke run. Progress to stderr, the Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLD_COMMIT = "d1c82c9"
COUNT_MODULES = (
    "import sys\nfrom engine.cli.main import main\n"
    "sys.argv = ['stockaj-rules', 'check', '--rules', 'rules']\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    "print(len(sys.modules), file=sys.stderr)"
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def author_environment() -> dict[str, str]:
    """A rule author's shell: no DATABASE_URL, REDIS_URL or other engine setting."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
    }


@contextlib.contextmanager
def old_checkout(commit: str, given: Path | None) -> Iterator[Path]:
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="bench-cli-start-") as folder:
        path = Path(folder) / "old"
        log(f"checking out {commit} in {path} and installing its .venv (~30 s)")
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), commit],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            subprocess.run([str(path / "scripts/setup-venv")], check=True, capture_output=True)
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)


def commands(old: Path) -> dict[str, tuple[list[str], Path]]:
    """Each command and the folder it runs in: `python -c` imports the code of the folder it runs in."""
    rules = str(ROOT / "rules")
    return {
        "old check": ([str(old / ".venv/bin/stockaj-rules"), "check", "--rules", rules], old),
        "new check": ([str(ROOT / ".venv/bin/stockaj-rules"), "check", "--rules", rules], ROOT),
        "old import engine.cli.main": ([str(old / ".venv/bin/python"), "-c", "import engine.cli.main"], old),
        "new import engine.cli.main": (
            [str(ROOT / ".venv/bin/python"), "-c", "import engine.cli.main"],
            ROOT,
        ),
        "rule modules alone (new)": (
            [str(ROOT / ".venv/bin/python"), "-c", "import actions.registry, engine.language.loader"],
            ROOT,
        ),
    }


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run: CPU time barely moves with the load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=author_environment(), capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr.decode()}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def modules_loaded(checkout: Path) -> int:
    """The modules `check` loads, counted in the checkout's own Python."""
    done = subprocess.run(
        [
            str(checkout / ".venv/bin/python"),
            "-c",
            COUNT_MODULES.replace("'rules'", repr(str(ROOT / "rules"))),
        ],
        cwd=checkout,
        env=author_environment(),
        capture_output=True,
        check=True,
    )
    return int(done.stderr.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default=OLD_COMMIT, help=f"the older commit (default {OLD_COMMIT})")
    parser.add_argument(
        "--old-checkout", type=Path, default=None, help="an existing checkout of it, with .venv"
    )
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()

    with old_checkout(args.old, args.old_checkout) as old:
        runs = commands(old)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        names = list(runs)
        for name in names:  # warm the file cache: the first start of each reads every .pyc from disk
            timed(*runs[name])
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(timed(*runs[name]))
            log(f"round {round_ + 1}/{args.rounds}")
        counts = {
            "old check": modules_loaded(old),
            "new check": modules_loaded(ROOT),
        }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    load = os.getloadavg()[0]
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, load average "
        f"{load:.1f}, old {args.old} vs new {commit.stdout.strip()}, {args.rounds} rounds\n"
    )
    print("| command | wall median | wall min | wall max | CPU median | modules loaded |")
    print("|---|---|---|---|---|---|")
    for name, values in times.items():
        walls, cpus = [wall for wall, _ in values], [cpu for _, cpu in values]
        count = counts.get(name)
        print(
            f"| {name} | {ms(statistics.median(walls))} | {ms(min(walls))} | {ms(max(walls))} | "
            f"{ms(statistics.median(cpus))} | {count if count is not None else ''} |"
        )
    for column, at in (("wall", 0), ("CPU", 1)):
        old, new = (statistics.median(run[at] for run in times[name]) for name in ("old check", "new check"))
        print(f"\n`check` {column} time: old median / new median = {old / new:.2f}x", end="")
    print()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


if __name__ == "__main__":
    main()
