"""The migrations against both real databases: they build exactly `engine.store.tables.metadata`.

Every test runs on a SQLite file and on a fresh database of the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import shutil
import textwrap
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.store import ActionRun, NewDelivery, Store, database
from engine.store.tables import ActionStatus, DeliveryStatus, metadata
from tests.store.helpers import finish_run, save_action_run

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
TABLES = {
    "deliveries",
    "rule_outcomes",
    "action_runs",
    "throttle_slots",
    "signature_failures",
    "process_heartbeats",
}
HEAD = "0003"  # the newest migration


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = database.create_engine(database_url)
    yield engine
    await engine.dispose()


def differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, metadata))


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def current_revisions(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(
            await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_heads())
        )


async def test_upgrading_an_empty_database_gives_exactly_the_tables_metadata(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        assert len(await connection.run_sync(differences)) > 0  # the comparison does see an empty database

    await database.upgrade(engine)

    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []
    assert await table_names(engine) == TABLES | {"alembic_version"}


async def test_upgrading_twice_is_a_no_op(engine: AsyncEngine) -> None:
    await database.upgrade(engine)
    store = Store(engine)
    await store.add_deliveries([NewDelivery("a", "item.updated", {}, b"{}", T0)], T0)

    await database.upgrade(engine)

    assert await current_revisions(engine) == {HEAD}
    assert await store.get("a") is not None
    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_schema_is_current_is_false_before_upgrade_and_true_after(engine: AsyncEngine) -> None:
    assert await database.schema_is_current(engine) is False

    await database.upgrade(engine)

    assert await database.schema_is_current(engine) is True


async def test_concurrent_upgrades_of_one_database_both_succeed(database_url: str) -> None:
    # Several replicas may run `stockaj-rules db upgrade` at start-up at the same moment.
    engines = [database.create_engine(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(database.upgrade(engine) for engine in engines))
        assert await current_revisions(engines[0]) == {HEAD}
        assert all([await database.schema_is_current(engine) for engine in engines])
    finally:
        for engine in engines:
            await engine.dispose()


async def test_the_initial_migration_downgrades_to_an_empty_database(engine: AsyncEngine) -> None:
    await database.upgrade(engine)

    def downgrade(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(database.MIGRATIONS))
        config.attributes["connection"] = connection
        command.downgrade(config, "base")

    async with engine.begin() as connection:
        await connection.run_sync(downgrade)

    assert await table_names(engine) <= {"alembic_version"}
    assert await database.schema_is_current(engine) is False


def test_migrations_form_one_line_of_history() -> None:
    config = Config()
    config.set_main_option("script_location", str(database.MIGRATIONS))
    script = ScriptDirectory.from_config(config)

    assert script.get_heads() == [HEAD]
    assert [revision.revision for revision in script.walk_revisions()] == [HEAD, "0002", "0001"]


def upgrade_to(revision: str) -> Callable[[Connection], None]:
    def upgrade(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(database.MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    return upgrade


async def test_deliveries_stored_before_the_unfinished_runs_column_start_at_zero(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(upgrade_to("0001"))
        await connection.execute(
            text(
                "INSERT INTO deliveries (delivery_id, event, status, headers, body, received_at, updated_at,"
                " due_at, runs) VALUES ('in-hand', 'item.updated', 'processing', '{}', NULL,"
                " :t, :t, :t, 2)"
            ),
            {"t": T0 if engine.dialect.name == "postgresql" else T0.replace(tzinfo=None)},
        )

    await database.upgrade(engine)

    stored = await Store(engine).get("in-hand")
    assert stored is not None
    assert (stored.status, stored.runs, stored.unfinished_runs) == (DeliveryStatus.PROCESSING, 2, 0)


# --- a later migration, as the project will grow them ------------------------------------------


@pytest.fixture
def migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the real migrations that a test can add revisions to."""
    copy = tmp_path / "migrations"
    shutil.copytree(database.MIGRATIONS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(database, "MIGRATIONS", copy)
    return copy


def add_revision(migrations: Path, body: str) -> None:
    header = (
        f'import sqlalchemy as sa\nfrom alembic import op\n\nrevision = "next"\ndown_revision = "{HEAD}"\n\n'
    )
    (migrations / "versions" / "9999_next.py").write_text(header + textwrap.dedent(body))


async def test_a_migration_rebuilding_deliveries_keeps_every_row_that_references_it(
    engine: AsyncEngine, migrations: Path
) -> None:
    # On SQLite, adding a constraint or changing a column type rebuilds the table (batch mode):
    # dropping the old `deliveries` with foreign keys on would cascade into the delivery log.
    await database.upgrade(engine)
    store = Store(engine)
    await store.add_deliveries([NewDelivery("a", "item.updated", {}, b"{}", T0)], T0)
    await finish_run(store, "a", DeliveryStatus.DONE, T0, None, None, outcomes=[("reorder", "fired", "")])
    run = ActionRun(
        rule_id="reorder",
        action_index=0,
        type="log",
        status=ActionStatus.SUCCEEDED,
        params={"message": "hi"},
        attempts=1,
        last_error=None,
        response_status=None,
        next_attempt_at=None,
        updated_at=T0,
    )
    await save_action_run(store, "a", run)
    add_revision(
        migrations,
        """
        def upgrade() -> None:
            rebuild = "always" if op.get_bind().dialect.name == "sqlite" else "auto"
            with op.batch_alter_table("deliveries", recreate=rebuild) as batch_op:
                batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))
        """,
    )

    await database.upgrade(engine)

    assert await current_revisions(engine) == {"next"}
    assert [o.rule_id for o in await store.outcomes("a")] == ["reorder"]
    assert await store.action_runs("a") == {("reorder", 0): run}
    if engine.dialect.name == "sqlite":  # and the connection the store keeps using enforces them again
        async with engine.connect() as connection:
            assert (await connection.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1


async def test_a_failed_migration_leaves_the_database_as_it_was(
    engine: AsyncEngine, migrations: Path
) -> None:
    await database.upgrade(engine)
    add_revision(
        migrations,
        """
        def upgrade() -> None:
            op.create_table("half_done", sa.Column("id", sa.Integer(), primary_key=True))
            op.add_column("deliveries", sa.Column("note", sa.Text(), nullable=True))
            raise RuntimeError("the migration broke halfway")
        """,
    )

    with pytest.raises(RuntimeError, match="halfway"):
        await database.upgrade(engine)

    assert await table_names(engine) == TABLES | {"alembic_version"}
    assert await current_revisions(engine) == {HEAD}
    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []
        if engine.dialect.name == "sqlite":
            assert (await connection.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
    store = Store(engine)  # and the store still works on it
    await store.add_deliveries([NewDelivery("a", "item.updated", {}, b"{}", T0)], T0 + timedelta(minutes=1))
    assert await store.due_deliveries(T0 + timedelta(minutes=1)) == ["a"]
