"""Finding and reading rule and fixture files: confined to their folder, plain files, bounded size.

A running server reads RULES_DIR and anyone may ask it whether that went well,
so nothing in the folder may lead elsewhere: a link, to a file or a folder,
that resolves outside RULES_DIR is a located problem, and its target is never
read. Links that stay inside are followed (a Kubernetes ConfigMap volume is
made of them), each folder once, so a link loop ends. Fixture folders are read
by the CLI from paths its user typed, and may link anywhere (`confined=False`).

Whatever the folder, a file is read only when it is a regular file (a FIFO
named `x.yaml` would block the read for ever) of at most `max_bytes`: rule
files are small, and a big one costs seconds and memory to parse.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from engine.errors import SourceProblem

RULE_FILE_SUFFIXES = (".json", ".yaml", ".yml")
# About 2,000 rules of the usual size: a folder is the place for more.
MAX_RULE_FILE_BYTES = 1024 * 1024
# A fixture holds a delivery body, up to what the receiver accepts and more.
MAX_FIXTURE_FILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a file is now, cheaply: a file whose stamp is unchanged need not be read again."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> Stamp | None:
        """The stamp of `path` (links followed), or None when it cannot be seen."""
        try:
            found = path.stat()
        except OSError:
            return None
        return cls(found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)


class SourceTooBig(Exception):
    """Raised by `read_source` with a message for the author; the file is not read."""


def find_source_files(root: Path, *, confined: bool = True) -> tuple[list[Path], list[SourceProblem]]:
    """Every rule or fixture file under `root` (or `root` itself), sorted, hidden ones skipped.

    A folder that cannot be read, and with `confined` a link out of `root`, is
    a problem, not a silent gap in the rule set.
    """
    if not root.is_dir():
        return [root], []
    real_root = root.resolve()
    found: list[Path] = []
    problems: list[SourceProblem] = []
    walked = {_identity(root)}
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = [entry for entry in listing if not entry.name.startswith(".")]
        except OSError as error:
            problems.append(SourceProblem(str(folder), 1, 1, f"cannot read the folder: {error.strerror}"))
            continue
        for entry in entries:
            path = Path(folder, entry.name)
            is_folder = _is_dir(entry)
            if not is_folder and path.suffix not in RULE_FILE_SUFFIXES:
                continue
            if confined and entry.is_symlink():
                outside = _outside(path, real_root)
                if outside is not None:
                    problems.append(outside)
                    continue
            if not is_folder:
                found.append(path)
            elif (identity := _identity(path)) not in walked:  # a link loop, or a second way in
                walked.add(identity)
                folders.append(path)
    return sorted(found), problems


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _identity(folder: Path) -> tuple[int, int]:
    try:
        found = folder.stat()
    except OSError:
        return (-1, id(folder))
    return (found.st_dev, found.st_ino)


def _outside(link: Path, real_root: Path) -> SourceProblem | None:
    """A problem when `link` resolves outside `real_root`."""
    try:
        target = link.resolve()
    except (OSError, RuntimeError) as exc:  # a loop of links
        return SourceProblem(str(link), 1, 1, f"cannot follow the link: {exc}; replace it with the file")
    if target == real_root or target.is_relative_to(real_root):
        return None
    kind = "folder" if target.is_dir() else "file"
    return SourceProblem(
        str(link),
        1,
        1,
        f"this link leads to the {kind} {target}, outside the rules folder {real_root}; "
        "rules are read only from inside it: copy the file in instead of linking to it",
    )


def read_source(path: Path, max_bytes: int) -> bytes:
    """The bytes of `path`; `SourceTooBig` or `OSError` (with a readable `strerror`) otherwise.

    Opened without blocking and checked to be a regular file before anything is read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise OSError(0, "not a regular file (a pipe, socket or device); keep only plain files here")
        if found.st_size > max_bytes:
            raise SourceTooBig(_too_big(found.st_size, max_bytes))
        chunks = []
        total = 0
        while chunk := os.read(fd, max_bytes + 1 - total):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # it grew while being read
                raise SourceTooBig(_too_big(total, max_bytes))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _too_big(size: int, max_bytes: int) -> str:
    return f"file is {size:,} bytes, more than the {max_bytes:,} allowed; split it into several files"
