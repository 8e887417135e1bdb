"""The PostgreSQL server shell, driven by real clients: psycopg 3, psql, and raw sockets.

The server runs on 127.0.0.1 on an ephemeral port in the test's event loop, in front of a fake
Session that understands a handful of statements, so these tests check the protocol and nothing of
the SQL engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import struct

import psycopg
import psycopg.errors
import pytest
import pytest_asyncio
from psycopg.pq import TransactionStatus

from aurora_db import errors
from aurora_db.constants import PGWIRE_MESSAGE_BYTES_MAX
from compute_node import pg_server
from compute_node.backend import BOOL_OID, INT4_OID, TEXT_OID, Column, Result

WAIT_TIMEOUT_S = 10
POLL_INTERVAL_S = 0.01
PSQL_TIMEOUT_S = 30


@dataclasses.dataclass
class FakeStatement:
    kind: str  # select_int, select_params, series, begin, commit, rollback, crash
    param_oids: list[int]
    columns: list[Column] | None
    number: int = 0


class FakeSession:
    """Understands only: SELECT <int>; SELECT $1, $2, ...; SELECT * FROM series(<n>) (n rows 1..n);
    BEGIN; COMMIT; ROLLBACK; CRASH (a bug: raises RuntimeError). Anything else is a syntax error."""

    def __init__(self):
        self.status = "I"
        self.prepared_sql: list[str] = []
        self.closes = 0

    @property
    def transaction_status(self) -> str:
        return self.status

    def prepare(self, sql: str, param_oids: list[int]) -> FakeStatement:
        self.prepared_sql.append(sql)
        try:
            return self._parse(sql.strip().rstrip(";").strip(), param_oids)
        except errors.DatabaseError:
            self._fail_transaction()
            raise

    def _parse(self, sql: str, param_oids: list[int]) -> FakeStatement:
        words = sql.upper().split()
        if words in (["BEGIN"], ["COMMIT"], ["ROLLBACK"]):
            return FakeStatement(words[0].lower(), [], None)
        if words == ["CRASH"]:
            return FakeStatement("crash", [], None)
        if len(words) == 2 and words[0] == "SELECT" and words[1].lstrip("-").isdigit():
            return FakeStatement("select_int", [], [Column("?column?", INT4_OID)], int(words[1]))
        if len(words) == 4 and words[:3] == ["SELECT", "*", "FROM"] and words[3].startswith("SERIES("):
            count = int(words[3].removeprefix("SERIES(").rstrip(")"))
            return FakeStatement("series", [], [Column("series", INT4_OID)], count)
        if words and words[0] == "SELECT" and sql[6:].strip().startswith("$"):
            count = len(sql[6:].split(","))
            oids = [(param_oids[i] if i < len(param_oids) and param_oids[i] else TEXT_OID) for i in range(count)]
            return FakeStatement("select_params", oids, [Column("?column?", oid) for oid in oids])
        raise errors.SyntaxError_(f'syntax error at or near "{sql.split()[0] if sql.split() else sql}"')

    def prepare_script(self, sql: str) -> list[FakeStatement]:
        return [self.prepare(part, []) for part in sql.split(";") if part.strip()]

    def _fail_transaction(self) -> None:
        if self.status == "T":
            self.status = "E"

    async def execute(self, statement: FakeStatement, params: list, *, sync_follows: bool = False) -> Result:
        if self.status == "E" and statement.kind not in ("commit", "rollback"):
            raise errors.InFailedTransaction(
                "current transaction is aborted, commands ignored until end of transaction block")
        if statement.kind in ("begin", "commit", "rollback"):
            self.status = "T" if statement.kind == "begin" else "I"
            return Result(tag="ROLLBACK" if self.status == "E" else statement.kind.upper())
        if statement.kind == "crash":
            self._fail_transaction()
            raise RuntimeError("the fake engine broke an invariant")
        if statement.kind == "select_int":
            return Result("SELECT 1", statement.columns, [(statement.number,)])
        if statement.kind == "series":
            return Result(f"SELECT {statement.number}", statement.columns,
                          [(n,) for n in range(1, statement.number + 1)])
        return Result("SELECT 1", statement.columns, [tuple(params)])

    async def sync(self, *, failed: bool = False) -> None:
        pass

    async def close(self) -> None:
        self.closes += 1


@dataclasses.dataclass
class RunningServer:
    port: int
    sessions: list[FakeSession]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    async def connect(self, **kwargs) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(self.url, autocommit=True, **kwargs)


async def start_server(**kwargs):
    sessions: list[FakeSession] = []

    def new_session() -> FakeSession:
        sessions.append(FakeSession())
        return sessions[-1]

    server = await pg_server.serve("127.0.0.1", 0, new_session, **kwargs)
    return server, RunningServer(server.sockets[0].getsockname()[1], sessions)


def connection_tasks() -> list[asyncio.Task]:
    return [task for task in asyncio.all_tasks() if "on_connection" in task.get_coro().__qualname__]


async def stop_server(listening) -> None:
    """Stop listening once every connection has ended, so none is cut off when the loop closes."""
    listening.close()
    await listening.wait_closed()
    await eventually(lambda: not connection_tasks())


@pytest_asyncio.fixture
async def server():
    listening, running = await start_server()
    yield running
    await stop_server(listening)


async def eventually(predicate) -> None:
    async with asyncio.timeout(WAIT_TIMEOUT_S):
        while not predicate():
            await asyncio.sleep(POLL_INTERVAL_S)


# A raw frontend, for what real clients never send.


def frontend_message(type_byte: bytes, body: bytes = b"") -> bytes:
    return type_byte + struct.pack(">i", len(body) + 4) + body


def cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def startup_packet(user: str = "postgres") -> bytes:
    body = struct.pack(">i", 3 << 16) + cstring("user") + cstring(user) + b"\x00"
    return struct.pack(">i", len(body) + 4) + body


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, *, start: bool = True) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        if start:
            client.send(startup_packet())
            await client.read_until_ready()
        return client

    def send(self, *messages: bytes) -> None:
        self.writer.write(b"".join(messages))

    async def read_message(self) -> tuple[bytes, bytes]:
        header = await asyncio.wait_for(self.reader.readexactly(5), WAIT_TIMEOUT_S)
        (length,) = struct.unpack(">i", header[1:])
        return header[:1], await asyncio.wait_for(self.reader.readexactly(length - 4), WAIT_TIMEOUT_S)

    async def read_until_ready(self) -> list[tuple[bytes, bytes]]:
        messages = [await self.read_message()]
        while messages[-1][0] != b"Z":
            messages.append(await self.read_message())
        return messages

    async def read_to_end(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(), WAIT_TIMEOUT_S)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def error_fields(body: bytes) -> dict[str, str]:
    return {field[:1]: field[1:] for field in body.decode().split("\x00") if field}


# psycopg 3.


async def test_simple_query_runs_every_statement_of_a_script(server):
    async with await server.connect() as connection:
        cursor = psycopg.AsyncClientCursor(connection)
        await cursor.execute("SELECT 1; SELECT 2")
        assert await cursor.fetchall() == [(1,)]
        assert cursor.nextset()
        assert await cursor.fetchall() == [(2,)]


async def test_startup_reports_the_parameters_clients_read(server):
    async with await psycopg.AsyncConnection.connect(server.url, application_name="probe") as connection:
        info = connection.info
        assert info.parameter_status("server_version") == "15.0"
        assert info.parameter_status("client_encoding") == "UTF8"
        assert info.parameter_status("DateStyle") == "ISO, MDY"
        assert info.parameter_status("integer_datetimes") == "on"
        assert info.parameter_status("standard_conforming_strings") == "on"
        assert info.parameter_status("TimeZone") == "UTC"
        assert info.parameter_status("session_authorization") == "postgres"
        assert info.parameter_status("application_name") == "probe"
        assert info.backend_pid > 0


async def test_extended_query_with_binary_and_text_parameters(server):
    params = [5, 70000, 2**40, 1.5, True, "txt", None]
    async with await server.connect() as connection:
        binary = await connection.execute("SELECT %b, %b, %b, %b, %b, %b, %b", params)
        assert await binary.fetchone() == (5, 70000, 2**40, 1.5, True, "txt", None)
        text = await connection.execute("SELECT %t, %t, %t, %t, %t, %t, %t", params)
        assert await text.fetchone() == (5, 70000, 2**40, 1.5, True, "txt", None)
        automatic = await connection.execute("SELECT %s, %s", [-3, "€ and ü"])
        assert await automatic.fetchone() == (-3, "€ and ü")


async def test_binary_results_decode_to_the_same_values(server):
    async with await server.connect() as connection:
        cursor = connection.cursor(binary=True)
        await cursor.execute("SELECT %s, %s, %s, %s, %s", [7, 2**40, -0.25, False, "bin"])
        assert await cursor.fetchone() == (7, 2**40, -0.25, False, "bin")
        await cursor.execute("SELECT 42")
        assert await cursor.fetchone() == (42,)


async def test_prepared_statement_is_parsed_once_and_survives_deallocate_all(server):
    async with await server.connect() as connection:
        for value in (1, 2, 3):
            cursor = await connection.execute("SELECT %s", [value], prepare=True)
            assert await cursor.fetchone() == (value,)
        session = server.sessions[-1]
        assert session.prepared_sql.count("SELECT $1") == 1
        await connection.execute("DEALLOCATE ALL")
        cursor = await connection.execute("SELECT %s", [4], prepare=True)
        assert await cursor.fetchone() == (4,)


async def test_an_error_is_reported_and_the_connection_goes_on(server):
    async with await server.connect() as connection:
        with pytest.raises(psycopg.errors.SyntaxError) as raised:
            await connection.execute("SELEKT 1")
        assert raised.value.sqlstate == "42601"
        assert await (await connection.execute("SELECT 3")).fetchone() == (3,)


async def test_an_error_in_a_transaction_fails_it_until_rollback(server):
    async with await server.connect() as connection:
        await connection.execute("BEGIN")
        with pytest.raises(psycopg.errors.SyntaxError):
            await connection.execute("SELEKT 1")
        assert connection.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            await connection.execute("SELECT 1")
        await connection.execute("ROLLBACK")
        assert connection.info.transaction_status == TransactionStatus.IDLE
        assert await (await connection.execute("SELECT 4")).fetchone() == (4,)


async def test_an_unexpected_exception_becomes_xx000_and_the_session_goes_on(server, caplog):
    async with await server.connect() as connection:
        with pytest.raises(psycopg.errors.InternalError_) as raised:
            await connection.execute("CRASH")
        assert raised.value.sqlstate == "XX000"
        assert "broke an invariant" in str(raised.value)
        assert await (await connection.execute("SELECT 5")).fetchone() == (5,)
    assert "broke an invariant" in caplog.text


async def test_pipeline_of_several_statements(server):
    async with await server.connect() as connection:
        async with connection.pipeline():
            cursors = [await connection.execute("SELECT %s", [value]) for value in range(5)]
        assert [await cursor.fetchone() for cursor in cursors] == [(value,) for value in range(5)]


async def test_pipeline_error_aborts_until_sync_then_work_resumes(server):
    async with await server.connect() as connection:
        with pytest.raises(psycopg.errors.SyntaxError):
            async with connection.pipeline():
                await connection.execute("SELECT 1")
                await connection.execute("SELEKT")
                await connection.execute("SELECT 2")
        assert await (await connection.execute("SELECT 6")).fetchone() == (6,)


async def test_close_releases_the_session_exactly_once(server):
    connection = await server.connect()
    await connection.execute("SELECT 1")
    await connection.close()
    await eventually(lambda: server.sessions[-1].closes == 1)
    await asyncio.sleep(0.05)
    assert server.sessions[-1].closes == 1


async def test_connections_over_the_limit_are_refused():
    listening, running = await start_server(connections_max=1)
    try:
        async with await running.connect():
            with pytest.raises(psycopg.OperationalError, match="too many clients"):
                await running.connect()
        await eventually(lambda: running.sessions[0].closes == 1)
        async with await running.connect() as connection:
            assert await (await connection.execute("SELECT 7")).fetchone() == (7,)
    finally:
        await stop_server(listening)


# psql.


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
async def test_psql_runs_a_command(server):
    process = await asyncio.create_subprocess_exec(
        "psql", "-X", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-c", "select 1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), PSQL_TIMEOUT_S)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().split() == ["?column?", "----------", "1", "(1", "row)"]


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
async def test_psql_shows_an_error(server):
    process = await asyncio.create_subprocess_exec(
        "psql", "-X", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-c", "selekt 1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), PSQL_TIMEOUT_S)
    assert process.returncode == 1
    assert 'ERROR:  syntax error at or near "selekt"' in stderr.decode()


# Raw sockets: bytes no client library sends.


async def test_garbage_bytes_close_that_connection_only(server):
    client = await RawClient.connect(server.port, start=False)
    client.send(b"\x00\x00\x00\x08garbage!")
    reply = await client.read_to_end()
    assert reply[:1] == b"E" and b"C08P01\x00" in reply
    await client.close()
    async with await server.connect() as connection:
        assert await (await connection.execute("SELECT 8")).fetchone() == (8,)


async def test_an_unknown_message_type_after_startup_closes_the_connection(server):
    client = await RawClient.connect(server.port)
    client.send(b"\xff\xff\xff\xff\xff")
    reply = await client.read_to_end()
    assert reply[:1] == b"E" and error_fields(reply[5:])["C"] == "08P01"
    await eventually(lambda: server.sessions[-1].closes == 1)
    await client.close()


async def test_an_oversize_length_is_refused_before_its_body_arrives(server):
    client = await RawClient.connect(server.port)
    client.send(b"Q" + struct.pack(">i", PGWIRE_MESSAGE_BYTES_MAX + 1))
    reply = await client.read_to_end()
    fields = error_fields(reply[5:])
    assert fields["C"] == "08P01" and fields["S"] == "FATAL"
    assert "exceeds the limit" in fields["M"]
    await client.close()
    async with await server.connect() as connection:
        assert await (await connection.execute("SELECT 9")).fetchone() == (9,)


async def test_a_client_that_disconnects_mid_message_releases_its_session(server):
    client = await RawClient.connect(server.port)
    query = frontend_message(b"Q", cstring("SELECT 1"))
    client.send(query[: len(query) // 2])
    await client.writer.drain()
    await client.close()
    await eventually(lambda: server.sessions[-1].closes == 1)
    async with await server.connect() as connection:
        assert await (await connection.execute("SELECT 10")).fetchone() == (10,)


async def test_ssl_request_is_refused_and_startup_continues(server):
    client = await RawClient.connect(server.port, start=False)
    client.send(struct.pack(">ii", 8, 80877103))
    assert await asyncio.wait_for(client.reader.readexactly(1), WAIT_TIMEOUT_S) == b"N"
    client.send(startup_packet())
    messages = await client.read_until_ready()
    assert [kind for kind, _ in messages][:1] == [b"R"]
    assert messages[-1] == (b"Z", b"I")
    await client.close()


async def test_cancel_request_closes_the_connection_quietly(server):
    client = await RawClient.connect(server.port, start=False)
    client.send(struct.pack(">iiii", 16, 80877102, 1, 2))
    assert await client.read_to_end() == b""
    await client.close()


async def test_empty_query_answers_empty_query_response(server):
    client = await RawClient.connect(server.port)
    client.send(frontend_message(b"Q", cstring("  ;")))
    assert [kind for kind, _ in await client.read_until_ready()] == [b"I", b"Z"]
    await client.close()


async def test_execute_with_maxrows_suspends_and_resumes_the_portal(server):
    client = await RawClient.connect(server.port)
    client.send(
        frontend_message(b"P", cstring("") + cstring("SELECT * FROM series(5)") + struct.pack(">h", 0)),
        frontend_message(b"B", cstring("") + cstring("") + struct.pack(">hhh", 0, 0, 0)),
        frontend_message(b"E", cstring("") + struct.pack(">i", 2)),
        frontend_message(b"E", cstring("") + struct.pack(">i", 2)),
        frontend_message(b"E", cstring("") + struct.pack(">i", 2)),
        frontend_message(b"S"),
    )
    messages = await client.read_until_ready()
    kinds = [kind for kind, _ in messages]
    assert kinds == [b"1", b"2", b"D", b"D", b"s", b"D", b"D", b"s", b"D", b"C", b"Z"]
    assert messages[-2][1] == b"SELECT 1\x00"
    await client.close()


async def test_describe_statement_sends_parameter_and_row_descriptions(server):
    client = await RawClient.connect(server.port)
    client.send(
        frontend_message(b"P", cstring("s1") + cstring("SELECT $1, $2") + struct.pack(">hii", 2, BOOL_OID, 0)),
        frontend_message(b"D", b"S" + cstring("s1")),
        frontend_message(b"D", b"S" + cstring("nope")),
        frontend_message(b"P", cstring("") + cstring("SELECT 1") + struct.pack(">h", 0)),
        frontend_message(b"S"),
    )
    messages = await client.read_until_ready()
    assert [kind for kind, _ in messages] == [b"1", b"t", b"T", b"E", b"Z"]
    assert messages[1][1] == struct.pack(">hII", 2, BOOL_OID, TEXT_OID)
    assert error_fields(messages[3][1])["C"] == "26000"
    await client.close()


async def test_after_an_extended_error_messages_are_discarded_until_sync(server):
    client = await RawClient.connect(server.port)
    client.send(
        frontend_message(b"P", cstring("") + cstring("SELEKT") + struct.pack(">h", 0)),
        frontend_message(b"B", cstring("") + cstring("") + struct.pack(">hhh", 0, 0, 0)),
        frontend_message(b"E", cstring("") + struct.pack(">i", 0)),
        frontend_message(b"S"),
        frontend_message(b"Q", cstring("SELECT 11")),
    )
    first = await client.read_until_ready()
    assert [kind for kind, _ in first] == [b"E", b"Z"]
    assert error_fields(first[0][1])["C"] == "42601"
    second = await client.read_until_ready()
    assert [kind for kind, _ in second] == [b"T", b"D", b"C", b"Z"]
    await client.close()


async def test_a_bad_parameter_value_is_22p02_and_the_connection_goes_on(server):
    client = await RawClient.connect(server.port)
    client.send(
        frontend_message(b"P", cstring("") + cstring("SELECT $1") + struct.pack(">hi", 1, INT4_OID)),
        frontend_message(b"B", cstring("") + cstring("") + struct.pack(">hhi", 0, 1, 3) + b"abc"
                         + struct.pack(">h", 0)),
        frontend_message(b"S"),
    )
    messages = await client.read_until_ready()
    assert [kind for kind, _ in messages] == [b"1", b"E", b"Z"]
    assert error_fields(messages[1][1])["C"] == "22P02"
    await client.close()


class AsyncPreparingSession(FakeSession):
    """A session that must read catalog pages to prepare, so its prepare methods are coroutines."""

    async def prepare(self, sql: str, param_oids: list[int]) -> FakeStatement:
        await asyncio.sleep(0)
        return super().prepare(sql, param_oids)

    async def prepare_script(self, sql: str) -> list[FakeStatement]:
        return [await self.prepare(part, []) for part in sql.split(";") if part.strip()]


async def test_a_session_may_prepare_asynchronously():
    listening = await pg_server.serve("127.0.0.1", 0, AsyncPreparingSession)
    url = f"postgresql://postgres@127.0.0.1:{listening.sockets[0].getsockname()[1]}/postgres"
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
            assert await (await connection.execute("SELECT %s", [12])).fetchone() == (12,)
            cursor = psycopg.AsyncClientCursor(connection)
            await cursor.execute("SELECT 13")
            assert await cursor.fetchone() == (13,)
    finally:
        await stop_server(listening)


async def test_a_result_larger_than_the_output_buffer_arrives_whole(server):
    rows_count = 100_000  # about 1.5 MB of DataRows: written in pieces as the buffer fills
    async with await server.connect() as connection:
        cursor = psycopg.AsyncClientCursor(connection)
        await cursor.execute(f"SELECT * FROM series({rows_count})")
        rows = await cursor.fetchall()
        assert len(rows) == rows_count and rows[-1] == (rows_count,)
