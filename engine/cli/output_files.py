"""Files a command is told to write (`deliveries export -o`, `test --junit`): written whole or not.

The data goes to a temporary file in the same folder, then takes the path's place in one
rename, so a reader never sees half a file and a crash leaves the old one. A path that
is a symbolic link is refused, never written through (a link planted in a shared folder
would otherwise aim the write at any file the user can change); an existing file is
replaced only when the caller says so, and only if it is a regular file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from engine.errors import StockajRulesError

Refusal = Literal["link", "not_regular", "exists"]


class RefusedOutput(StockajRulesError):
    """The path may not be written: `str()` says why, `kind` lets the command say what to do."""

    def __init__(self, path: Path, kind: Refusal, reason: str) -> None:
        super().__init__(f"{path} {reason}")
        self.kind = kind


def write_output(
    path: Path, data: bytes, *, why_not_replace: Callable[[Path], str | None], make_parents: bool = False
) -> None:
    """Write `data` at `path` atomically.

    An existing regular file is replaced when `why_not_replace(path)` is None; otherwise its
    answer ("already exists") is the RefusedOutput's reason. A symbolic link, a folder or a
    device is always refused. OSError for what the system refuses (no folder, no permission).
    """
    _check(path, why_not_replace)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # as a plain open() would have made it
        if os.path.lexists(path):
            _check(path, why_not_replace)  # again: it may have changed meanwhile
            os.replace(temporary, path)  # a rename replaces a link itself, never its target
        else:
            _put_new(Path(temporary), path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _check(path: Path, why_not_replace: Callable[[Path], str | None]) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise RefusedOutput(path, "link", "is a symbolic link: it is not written through")
    if not stat.S_ISREG(mode):
        raise RefusedOutput(path, "not_regular", "exists and is not a regular file")
    reason = why_not_replace(path)
    if reason is not None:
        raise RefusedOutput(path, "exists", reason)


def _put_new(temporary: Path, path: Path) -> None:
    """Put `temporary` at `path` only if nothing is there: a hard link fails if anything is."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise RefusedOutput(path, "exists", "appeared while it was being written") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        # No hard links on this file system: a rename, after looking once more.
        _check(path, lambda _: "appeared while it was being written")
        os.replace(temporary, path)


def write_for_command(
    what: str, path: Path, data: bytes, *, option: str, replace: Callable[[Path], str | None] | None = None
) -> str | None:
    """`write_output` for a command's `option`: None when written, else the one line to print.

    `replace` None: an existing file is replaced only with `--force`, which the line suggests.
    """
    try:
        write_output(path, data, why_not_replace=replace or never, make_parents=replace is not None)
    except RefusedOutput as exc:
        fix = f"give another {option} path, or remove what is there"
        if replace is None and exc.kind == "exists":
            fix = f"pass --force to replace it, or give another {option} path"
        return f"cannot write {what}: {exc}; {fix}"
    except OSError as exc:
        return f"cannot write {what} to {path}: {exc.strerror or exc}; give another {option} path"
    return None


def never(_: Path) -> str:
    """For `why_not_replace`: an existing file is never replaced."""
    return "already exists"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
