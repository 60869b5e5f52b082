"""requirements.lock, which the container image installs, keeps up with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)", re.MULTILINE)


def _pins() -> dict[str, Version]:
    text = (REPO / "requirements.lock").read_text(encoding="utf-8")
    return {canonicalize_name(name): Version(version) for name, version in PIN.findall(text)}


def _dependencies() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(line) for line in project["dependencies"]]


def test_every_dependency_is_pinned_within_its_range() -> None:
    pins = _pins()
    problems = []
    for requirement in _dependencies():
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None:
            problems.append(f"{requirement.name} is not in requirements.lock")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{requirement.name}=={pinned} is outside {requirement.specifier}")
    assert problems == [], "; ".join(problems) + ": run scripts/lock and commit requirements.lock"


def test_every_pin_carries_a_hash() -> None:
    # pip then installs in hash-checking mode: the image gets exactly the files locked.
    text = (REPO / "requirements.lock").read_text(encoding="utf-8")
    hashed = re.findall(
        r"^[A-Za-z0-9][A-Za-z0-9._-]*==[^\n]* \\\n\s+--hash=sha256:[0-9a-f]{64}", text, re.MULTILINE
    )
    assert len(hashed) == len(PIN.findall(text)) >= len(_dependencies())
