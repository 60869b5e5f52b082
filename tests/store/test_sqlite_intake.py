"""The SQLite intake's own connection (engine/store/sqlite_writer.py), against real database files."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from engine.store.sqlite_writer import SQLiteIntakeWriter

INSERT = "INSERT INTO deliveries (id) VALUES (?) ON CONFLICT (id) DO NOTHING RETURNING id"


def make_database(path: Path) -> None:
    with sqlite3.connect(path) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE deliveries (id TEXT PRIMARY KEY)")
    setup.close()


def stored(path: Path) -> set[str]:
    with sqlite3.connect(path) as reader:
        ids = {row[0] for row in reader.execute("SELECT id FROM deliveries")}
    reader.close()
    return ids


async def test_the_intake_connection_syncs_every_commit_to_disk(tmp_path: Path) -> None:
    """The receiver answers once this commit returns: it must be on disk (synchronous=FULL)."""
    path = tmp_path / "store.db"
    make_database(path)
    writer = SQLiteIntakeWriter(str(path))
    try:
        await writer.insert_returning(INSERT, ["dlv-1"])
        assert writer._open().execute("PRAGMA synchronous").fetchone() == (2,)
    finally:
        writer.close()


async def test_a_batch_is_committed_and_a_duplicate_returns_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    make_database(path)
    writer = SQLiteIntakeWriter(str(path))
    try:
        assert await writer.insert_returning(INSERT, ["dlv-1"]) == ["dlv-1"]
        assert await writer.insert_returning(INSERT, ["dlv-1"]) == []
    finally:
        writer.close()
    assert stored(path) == {"dlv-1"}


async def test_a_write_cancelled_while_waiting_for_the_lock_finishes_in_its_thread(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    make_database(path)
    other = sqlite3.connect(path, isolation_level=None)  # another process holds the write lock
    other.execute("BEGIN IMMEDIATE")
    writer = SQLiteIntakeWriter(str(path))
    try:
        waiting = asyncio.create_task(writer.insert_returning(INSERT, ["dlv-cancelled"]))
        await asyncio.sleep(0.2)
        waiting.cancel()  # the receiver stopping: its request was answered 503
        with pytest.raises(asyncio.CancelledError):
            await waiting

        other.execute("COMMIT")
        other.close()
        # The next batch gets a connection of its own, and both writes land.
        assert await writer.insert_returning(INSERT, ["dlv-next"]) == ["dlv-next"]
        for _ in range(200):
            if stored(path) == {"dlv-cancelled", "dlv-next"}:
                break
            await asyncio.sleep(0.01)
        assert stored(path) == {"dlv-cancelled", "dlv-next"}
    finally:
        writer.close()


async def test_an_error_other_than_a_busy_lock_is_raised_and_the_file_opened_afresh(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    make_database(path)
    writer = SQLiteIntakeWriter(str(path))
    try:
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await writer.insert_returning("INSERT INTO missing (id) VALUES (?) RETURNING id", ["x"])
        assert await writer.insert_returning(INSERT, ["dlv-after"]) == ["dlv-after"]
    finally:
        writer.close()
