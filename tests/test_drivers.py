"""The drivers applications use, unchanged, against a real cluster: asyncpg (inferred parameter
types, binary results, PortalSuspended, COPY), psycopg 3 (pipeline mode, prepared statements,
savepoints) and SQLAlchemy 2 (Core and ORM)."""

from __future__ import annotations

import asyncio
import io
import itertools

import psycopg
import psycopg.errors
import pytest

import asyncpg  # noqa: E402  (the test extra declares asyncpg and sqlalchemy: missing fails, never skips)
from sqlalchemy import Boolean, Float, Integer, String, create_engine, func, select  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402

_names = itertools.count()


def _run(coroutine):
    return asyncio.run(coroutine)


def test_asyncpg_infers_parameter_types_and_reads_binary_results(sql_cluster):
    table = f"apg_{next(_names)}"

    async def scenario():
        connection = await asyncpg.connect(sql_cluster.url)
        try:
            await connection.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, ok bool, f float8, "
                                     f"big bigint, s smallint, r real, v varchar(10))")
            await connection.execute(f"INSERT INTO {table} VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                                     1, "a", True, 1.5, 2**40, 3, 2.5, "vv")
            row = await connection.fetchrow(f"SELECT * FROM {table} WHERE id = $1", 1)
            assert tuple(row) == (1, "a", True, 1.5, 2**40, 3, 2.5, "vv")
            statement = await connection.prepare(f"SELECT name FROM {table} WHERE id = $1 AND ok = $2")
            assert [t.name for t in statement.get_parameters()] == ["int4", "bool"]
            assert await statement.fetchval(1, True) == "a"
            assert await connection.fetchval("SELECT $1::text || 'x'", "a") == "ax"
            assert await connection.fetchval("SELECT $1::int + 1", 41) == 42
        finally:
            await connection.close()

    _run(scenario())


def test_asyncpg_pool_resets_released_connections(sql_cluster):
    """A pool runs asyncpg's reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) on release."""

    async def scenario():
        pool = await asyncpg.create_pool(sql_cluster.url, min_size=1, max_size=1)
        try:
            async with pool.acquire() as connection:
                await connection.execute("SET application_name = 'leased'")
                assert await connection.fetchval("SELECT 1") == 1
            async with pool.acquire() as connection:
                assert await connection.fetchval("SHOW application_name") == ""
        finally:
            await pool.close()

    _run(scenario())


def test_asyncpg_hears_of_a_parse_error_before_it_sends_sync(sql_cluster):
    """asyncpg sends Parse, Describe, Flush and waits: the ErrorResponse must be flushed at once."""

    async def scenario():
        connection = await asyncpg.connect(sql_cluster.url)
        try:
            with pytest.raises(asyncpg.PostgresError):
                await asyncio.wait_for(connection.fetchval("SELECT * FROM no_such_table"), 10)
            assert await connection.fetchval("SELECT 1") == 1
        finally:
            await connection.close()

    _run(scenario())


def test_asyncpg_cursors_suspend_the_portal_at_the_row_limit(sql_cluster):
    table = f"apg_{next(_names)}"

    async def scenario():
        connection = await asyncpg.connect(sql_cluster.url)
        try:
            await connection.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
            await connection.executemany(f"INSERT INTO {table} VALUES ($1)", [(i,) for i in range(5)])
            async with connection.transaction():
                cursor = await connection.cursor(f"SELECT id FROM {table} ORDER BY id")
                assert [r["id"] for r in await cursor.fetch(2)] == [0, 1]
                assert [r["id"] for r in await cursor.fetch(10)] == [2, 3, 4]
                assert [r["id"] async for r in connection.cursor(f"SELECT id FROM {table}", prefetch=2)] == \
                    [0, 1, 2, 3, 4]
        finally:
            await connection.close()

    _run(scenario())


def test_asyncpg_executemany_is_one_transaction_up_to_sync(sql_cluster):
    """The extended protocol's statements up to Sync share one implicit transaction, as in PostgreSQL."""
    table = f"apg_{next(_names)}"

    async def scenario():
        connection = await asyncpg.connect(sql_cluster.url)
        try:
            await connection.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
            with pytest.raises(asyncpg.UniqueViolationError):
                await connection.executemany(f"INSERT INTO {table} VALUES ($1)", [(1,), (2,), (1,)])
            assert await connection.fetchval(f"SELECT count(*) FROM {table}") == 0
        finally:
            await connection.close()

    _run(scenario())


def test_asyncpg_copy_to_and_from_a_table(sql_cluster):
    table = f"apg_{next(_names)}"

    async def scenario():
        connection = await asyncpg.connect(sql_cluster.url)
        try:
            await connection.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
            assert await connection.copy_to_table(table, source=io.BytesIO(b"1\tx\n2\t\\N\n"), format="text") == "COPY 2"
            output = io.BytesIO()
            assert await connection.copy_from_table(table, output=output, format="text") == "COPY 2"
            assert sorted(output.getvalue().splitlines()) == [b"1\tx", b"2\t\\N"]
        finally:
            await connection.close()

    _run(scenario())


def test_asyncpg_copy_records_uses_the_binary_format(sql_cluster):
    table = f"apg_{next(_names)}"
    records = [(i, None if i % 3 == 0 else f"v{i}", i / 2, i % 2 == 0, 2**40 + i) for i in range(2500)]

    async def scenario():
        connection = await asyncpg.connect(sql_cluster.url)
        try:
            await connection.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text, f float8, b bool, big bigint)")
            assert await connection.copy_records_to_table(table, records=records) == f"COPY {len(records)}"
            assert tuple(await connection.fetchrow(f"SELECT * FROM {table} WHERE id = 7")) == records[7]
            with pytest.raises(asyncpg.UniqueViolationError):
                await connection.copy_records_to_table(table, records=[(9000, "x", 1.0, True, 1), (1, "x", 1.0, True, 1)])
            assert await connection.fetchval(f"SELECT count(*) FROM {table}") == len(records)
            output = io.BytesIO()
            assert await connection.copy_from_table(table, output=output, format="binary") == f"COPY {len(records)}"
            await connection.execute(f"CREATE TABLE {table}_copy (id int PRIMARY KEY, v text, f float8, b bool, big bigint)")
            output.seek(0)
            await connection.copy_to_table(f"{table}_copy", source=output, format="binary")
            assert sorted(map(tuple, await connection.fetch(f"SELECT * FROM {table}_copy"))) == records
        finally:
            await connection.close()

    _run(scenario())


def test_psycopg_pipeline_mode_and_prepared_statements(sql_cluster):
    table = f"pipe_{next(_names)}"
    with sql_cluster.connect() as connection:
        connection.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
        with connection.pipeline():
            for i in range(10):
                connection.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i, str(i)))
            cursor = connection.execute(f"SELECT count(*) FROM {table}")
        assert cursor.fetchone() == (10,)
        for i in range(10):  # psycopg prepares server-side from the first use with prepare=True
            assert connection.execute(f"SELECT v FROM {table} WHERE id = %s", (i,), prepare=True).fetchone() == (str(i),)
        with pytest.raises(psycopg.errors.UniqueViolation):
            with connection.pipeline():
                connection.execute(f"INSERT INTO {table} VALUES (%s, %s)", (100, "x"))
                connection.execute(f"INSERT INTO {table} VALUES (%s, %s)", (1, "dup"))
        assert connection.execute(f"SELECT count(*) FROM {table}").fetchone() == (10,)


def test_savepoints_without_writes_roll_back_and_with_writes_are_refused(sql_cluster):
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE savepoints (id int PRIMARY KEY)")
        connection.execute("BEGIN")
        connection.execute("SAVEPOINT a")
        with pytest.raises(psycopg.errors.UndefinedTable):
            connection.execute("SELECT * FROM no_such_table")
        connection.execute("ROLLBACK TO SAVEPOINT a")
        connection.execute("INSERT INTO savepoints VALUES (1)")
        connection.execute("SAVEPOINT b")
        connection.execute("RELEASE SAVEPOINT b")
        connection.execute("COMMIT")
        assert connection.execute("SELECT id FROM savepoints").fetchall() == [(1,)]
        connection.execute("BEGIN")
        connection.execute("SAVEPOINT c")
        connection.execute("INSERT INTO savepoints VALUES (2)")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            connection.execute("ROLLBACK TO SAVEPOINT c")
        connection.execute("ROLLBACK")
        with pytest.raises(psycopg.errors.NoActiveSqlTransaction):
            connection.execute("SAVEPOINT outside")


def test_sqlalchemy_core_and_orm(sql_cluster):
    class Base(DeclarativeBase):
        pass

    class Player(Base):
        __tablename__ = "sa_players"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        name: Mapped[str] = mapped_column(String(50))
        active: Mapped[bool] = mapped_column(Boolean)
        score: Mapped[float] = mapped_column(Float)

    class Team(Base):
        __tablename__ = "sa_teams"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)  # SERIAL: ids come from RETURNING
        name: Mapped[str] = mapped_column(String(50))

    engine = create_engine(sql_cluster.url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        Base.metadata.create_all(engine)
        Base.metadata.create_all(engine)  # has_table now finds it: nothing to do
        with Session(engine) as session:
            session.add_all([Player(id=1, name="ann", active=True, score=1.5),
                             Player(id=2, name="bob", active=False, score=2.5)])
            session.commit()
            assert session.query(Player).filter_by(name="ann").one().score == 1.5
            bob = session.get(Player, 2)
            bob.score = 9.0
            session.commit()
            assert session.scalars(select(Player.score).order_by(Player.id)).all() == [1.5, 9.0]
            session.delete(bob)
            session.commit()
            assert session.scalar(select(func.count()).select_from(Player)) == 1
        with Session(engine) as session:  # no ids given: one INSERT ... SELECT FROM (VALUES ...) RETURNING
            session.add_all([Team(name="red"), Team(name="blue"), Team(name="green")])
            session.commit()
            assert session.scalars(select(Team.name).order_by(Team.id)).all() == ["red", "blue", "green"]
        with engine.begin() as connection:
            connection.execute(Player.__table__.insert(), [{"id": 3, "name": "cy", "active": True, "score": 0.0}])
            rows = connection.execute(select(Player.__table__.c.name).where(Player.__table__.c.active)
                                      .order_by(Player.__table__.c.id)).all()
            assert [row.name for row in rows] == ["ann", "cy"]
        Base.metadata.drop_all(engine)
    finally:
        engine.dispose()


def test_sqlalchemy_asyncio_over_asyncpg(sql_cluster):
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    class AsyncBase(DeclarativeBase):
        pass

    class Item(AsyncBase):
        __tablename__ = "sa_async_items"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        name: Mapped[str] = mapped_column(String(30))

    async def scenario():
        engine = create_async_engine(sql_cluster.url.replace("postgresql://", "postgresql+asyncpg://"))
        try:
            async with engine.begin() as connection:
                await connection.run_sync(AsyncBase.metadata.create_all)
            async with AsyncSession(engine, expire_on_commit=False) as session:
                item = Item(name="first")  # one object: INSERT ... RETURNING id (SERIAL)
                session.add(item)
                await session.commit()
                assert item.id == 1
                assert (await session.scalars(select(Item.name))).all() == ["first"]
            async with engine.begin() as connection:
                await connection.run_sync(AsyncBase.metadata.drop_all)
        finally:
            await engine.dispose()

    _run(scenario())
