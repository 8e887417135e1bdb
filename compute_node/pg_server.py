"""The compute node's PostgreSQL server: the asyncio shell around pgwire's sans-I/O codec.

Responsibilities: accept client connections; run the startup handshake (SSL and GSSAPI refused,
trust authentication); drive one Session per connection through the simple and the extended query
protocols and COPY's sub-protocol; own the connection's prepared statements and portals (hence
DEALLOCATE as well); end the extended protocol's implicit transaction at Sync (Session.sync).
Invariants: replies are buffered and written at ReadyForQuery and Flush, or early once the buffer
passes PGWIRE_OUTPUT_BUFFER_BYTES_MAX; after an error in the extended protocol every message up to
Sync is discarded; a DatabaseError becomes an ErrorResponse and the connection goes on; bytes that
break the protocol close that one connection, never the server; a session is closed exactly once;
an ErrorResponse of the extended protocol is flushed at once (asyncpg waits for it after Flush).
PostgreSQL 15 documentation, 55.2 (Message Flow), 55.2.6 (COPY Operations).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import inspect
import itertools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aurora_db import errors, pgwire
from aurora_db.constants import (
    SERVER_VERSION,
    PGWIRE_CLOSE_TIMEOUT_MS,
    PGWIRE_CONNECTIONS_MAX,
    PGWIRE_OUTPUT_BUFFER_BYTES_MAX,
    PGWIRE_PORTALS_MAX,
    PGWIRE_PREPARED_STATEMENTS_MAX,
    PGWIRE_READ_CHUNK_BYTES,
    PGWIRE_STARTUP_TIMEOUT_MS,
)
from compute_node.backend import Column, CopyIn, CopyOut, Result, Session, Statement

logger = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
T = TypeVar("T")

class ClientGone(Exception):
    """Writing to the client failed: the connection is lost, nothing more can be told."""


class DuplicatePreparedStatement(errors.DatabaseError):
    sqlstate = "42P05"


class DuplicateCursor(errors.DatabaseError):
    sqlstate = "42P03"


class ObjectNotInPrerequisiteState(errors.DatabaseError):
    sqlstate = "55000"


class TooManyConnections(errors.DatabaseError):
    sqlstate = "53300"


class QueryCanceled(errors.DatabaseError):
    sqlstate = "57014"


class Phase(enum.Enum):
    """Where a connection is; TRANSITIONS lists every legal move, anything else is a bug."""

    STARTUP = "startup"  # SSLRequest and GSSENCRequest refused, waiting for the StartupMessage
    READY = "ready"  # serving queries
    SKIPPING_TO_SYNC = "skipping_to_sync"  # an extended-protocol message failed: discard until Sync
    CLOSED = "closed"


TRANSITIONS = {
    (Phase.STARTUP, "authenticated"): Phase.READY,
    (Phase.READY, "extended_error"): Phase.SKIPPING_TO_SYNC,
    (Phase.READY, "sync"): Phase.READY,
    (Phase.SKIPPING_TO_SYNC, "sync"): Phase.READY,
    (Phase.STARTUP, "close"): Phase.CLOSED,
    (Phase.READY, "close"): Phase.CLOSED,
    (Phase.SKIPPING_TO_SYNC, "close"): Phase.CLOSED,
    (Phase.CLOSED, "close"): Phase.CLOSED,
}


@dataclasses.dataclass(frozen=True, slots=True)
class EmptyStatement:
    """A Parse of an empty query string: Execute answers EmptyQueryResponse."""

    param_oids: list[int] = dataclasses.field(default_factory=list)
    columns: list[Column] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DeallocateStatement:
    """DEALLOCATE [PREPARE] name | ALL. The protocol layer owns prepared statements, so it runs this."""

    name: str | None  # None: all
    param_oids: list[int] = dataclasses.field(default_factory=list)
    columns: list[Column] | None = None


_DEALLOCATE = re.compile(r"\s*deallocate\s+(?:prepare\s+)?(?:(?P<all>all)|\"(?P<quoted>[^\"]+)\"|(?P<name>\w+))\s*;?\s*",
                         re.IGNORECASE)


def _protocol_statement(sql: str) -> EmptyStatement | DeallocateStatement | None:
    """The statements the protocol layer answers itself; None for everything the session runs."""
    if not sql.strip(" \t\n\r\f\v;"):
        return EmptyStatement()
    match = _DEALLOCATE.fullmatch(sql)
    if match is None:
        return None
    if match.group("all"):
        return DeallocateStatement(None)
    return DeallocateStatement(match.group("quoted") or match.group("name").lower())


async def _settled(value: T | Awaitable[T]) -> T:
    """backend.py declares Session.prepare and prepare_script synchronous; a session that must read
    catalog pages to prepare may make them coroutines. Both work here."""
    return await value if inspect.isawaitable(value) else value


@dataclasses.dataclass(slots=True)
class Portal:
    """A bound statement. It runs once, at its first Execute; later Executes continue its rows."""

    statement: Statement
    params: list[Any]
    formats: list[int]
    result: Result | None = None
    rows_sent: int = 0


@dataclasses.dataclass(slots=True)
class ServerContext:
    """What every connection of one listening server shares."""

    session_factory: SessionFactory
    server_version: str
    connections_max: int
    connections_open: int = 0
    process_ids: itertools.count = dataclasses.field(default_factory=lambda: itertools.count(1))
    connections: set["ClientConnection"] = dataclasses.field(default_factory=set)

    def terminate_all(self, error: errors.DatabaseError) -> int:
        """End every open connection with a FATAL `error` (the node changed role: its sessions
        belong to an engine that is gone). Returns how many there were."""
        connections = list(self.connections)
        for connection in connections:
            connection.terminate(error)
        return len(connections)


async def serve(host: str, port: int, session_factory: SessionFactory, *, server_version: str = SERVER_VERSION,
                connections_max: int = PGWIRE_CONNECTIONS_MAX,
                context: ServerContext | None = None) -> asyncio.base_events.Server:
    """Listen for PostgreSQL clients; each connection gets its own session_factory() Session."""
    context = context or ServerContext(session_factory, server_version, connections_max)

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ClientConnection(context, reader, writer).run()

    server = await asyncio.start_server(on_connection, host, port)
    logger.info("PostgreSQL protocol listening on %s", [socket.getsockname() for socket in server.sockets])
    return server


class ClientConnection:
    """One client: its decoder, its session, its prepared statements and portals, its reply buffer."""

    def __init__(self, context: ServerContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._context = context
        self._reader = reader
        self._writer = writer
        self._peer = writer.get_extra_info("peername")
        self._decoder = pgwire.FrontendDecoder()
        self._output = bytearray()
        self.phase = Phase.STARTUP
        self._session: Session | None = None
        self._statements: dict[str, Statement] = {}
        self._portals: dict[str, Portal] = {}
        self._handlers = {
            pgwire.SSLRequest: self._on_encryption_request,
            pgwire.GSSENCRequest: self._on_encryption_request,
            pgwire.CancelRequest: self._on_cancel_request,
            pgwire.StartupMessage: self._on_startup,
            pgwire.Query: self._on_query,
            pgwire.Parse: self._on_parse,
            pgwire.Bind: self._on_bind,
            pgwire.Describe: self._on_describe,
            pgwire.Execute: self._on_execute,
            pgwire.Close: self._on_close,
            pgwire.Sync: self._on_sync,
            pgwire.Flush: self._on_flush,
            pgwire.Terminate: self._on_terminate,
            pgwire.CopyData: self._on_stray_copy_message,
            pgwire.CopyDone: self._on_stray_copy_message,
            pgwire.CopyFail: self._on_stray_copy_message,
        }

    def _advance(self, event: str) -> None:
        self.phase = TRANSITIONS[(self.phase, event)]

    def terminate(self, error: errors.DatabaseError) -> None:
        """From outside the connection's task: a FATAL error, then the connection closes (its
        task meets the closed socket and cleans up)."""
        if self._writer.is_closing():
            return
        self._writer.write(bytes(self._output) + pgwire.encode_database_error(error, severity="FATAL"))
        self._output.clear()
        self._writer.close()

    async def run(self) -> None:
        self._context.connections_open += 1
        self._context.connections.add(self)
        try:
            await self._serve_messages()
        except pgwire.ProtocolError as error:
            logger.info("closing connection from %s: %s", self._peer, error)
            await self._send_fatal(errors.ProtocolViolation(str(error)))
        except (ClientGone, OSError) as error:
            logger.debug("connection from %s lost: %s", self._peer, error)
        finally:
            self._context.connections_open -= 1  # before the session closes: a client may reconnect at once
            self._context.connections.discard(self)
            await self._close()

    async def _serve_messages(self) -> None:
        while self.phase is not Phase.CLOSED:
            data = await self._read()
            if not data:
                return
            self._decoder.receive(data)
            while self.phase is not Phase.CLOSED and (message := self._decoder.next_message()) is not None:
                await self._dispatch(message)

    async def _read(self) -> bytes:
        """The next bytes; b"" at end of stream. A client gets PGWIRE_STARTUP_TIMEOUT_MS to start up."""
        if self.phase is not Phase.STARTUP:
            return await self._reader.read(PGWIRE_READ_CHUNK_BYTES)
        try:
            return await asyncio.wait_for(self._reader.read(PGWIRE_READ_CHUNK_BYTES), PGWIRE_STARTUP_TIMEOUT_MS / 1000)
        except TimeoutError:
            logger.info("closing connection from %s: no startup in %d ms", self._peer, PGWIRE_STARTUP_TIMEOUT_MS)
            return b""

    async def _dispatch(self, message: pgwire.FrontendMessage) -> None:
        startup_message = isinstance(message, pgwire.StartupPhaseMessage)
        assert startup_message == (self.phase is Phase.STARTUP), (self.phase, message)
        if self.phase is Phase.SKIPPING_TO_SYNC and not isinstance(message, (pgwire.Sync, pgwire.Terminate)):
            return
        handler = self._handlers[type(message)]
        if startup_message or isinstance(message, (pgwire.Query, pgwire.Sync, pgwire.Flush, pgwire.Terminate)):
            await handler(message)
            return
        try:
            await handler(message)
        except ClientGone:
            raise
        except Exception as error:  # the extended protocol: report, then discard until Sync
            self._send_error(error)
            self._advance("extended_error")
            await self._flush()  # as PostgreSQL does: a client that sent Flush, not Sync, waits for it

    async def _close(self) -> None:
        self._advance("close")
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), PGWIRE_CLOSE_TIMEOUT_MS / 1000)
        except OSError:  # TimeoutError included
            self._writer.transport.abort()  # a client that stopped reading: drop what it did not take
        session, self._session = self._session, None
        if session is not None:
            try:
                await session.close()
            except Exception:
                logger.exception("closing the session of %s failed", self._peer)

    # Output.

    def _send(self, message: bytes) -> None:
        self._output += message

    async def _flush(self) -> None:
        try:
            if self._output:
                self._writer.write(bytes(self._output))
                self._output.clear()
            await self._writer.drain()
        except OSError as error:
            raise ClientGone(str(error)) from error

    async def _flush_if_full(self) -> None:
        if len(self._output) >= PGWIRE_OUTPUT_BUFFER_BYTES_MAX:
            await self._flush()

    def _send_error(self, error: Exception) -> None:
        if not isinstance(error, errors.DatabaseError):
            logger.error("internal error serving %s", self._peer, exc_info=error)
            error = errors.InternalError(str(error) or type(error).__name__)
        self._send(pgwire.encode_database_error(error))

    async def _send_fatal(self, error: errors.DatabaseError) -> None:
        """Tell the client why its connection ends, if it still listens."""
        self._send(pgwire.encode_database_error(error, severity="FATAL"))
        try:
            await self._flush()
        except ClientGone:
            pass
        self._advance("close")

    def _send_ready_for_query(self) -> None:
        assert self._session is not None
        self._send(pgwire.encode_ready_for_query(self._session.transaction_status))

    # Startup.

    async def _on_encryption_request(self, message: pgwire.SSLRequest | pgwire.GSSENCRequest) -> None:
        self._send(pgwire.SSL_REFUSED)
        await self._flush()

    async def _on_cancel_request(self, message: pgwire.CancelRequest) -> None:
        logger.debug("cancel request from %s for process %d ignored", self._peer, message.process_id)
        self._advance("close")

    async def _on_startup(self, message: pgwire.StartupMessage) -> None:
        self._negotiate_protocol_version(message)
        user = message.parameters.get("user")
        if not user:
            await self._send_fatal(errors.ProtocolViolation("no PostgreSQL user name specified in startup packet"))
            return
        if self._context.connections_open > self._context.connections_max:
            await self._send_fatal(TooManyConnections("sorry, too many clients already"))
            return
        try:
            self._session = self._context.session_factory()
        except Exception as error:
            if not isinstance(error, errors.DatabaseError):
                logger.error("could not start a session for %s", self._peer, exc_info=error)
                error = errors.InternalError(str(error) or type(error).__name__)
            await self._send_fatal(error)
            return
        settings = getattr(self._session, "settings", None)
        if settings is not None:
            settings["session_authorization"] = user  # current_user, and the owner pg_catalog shows
        self._send(pgwire.encode_authentication_ok())
        for name, value in self._parameter_statuses(user, message.parameters.get("application_name", "")):
            self._send(pgwire.encode_parameter_status(name, value))
        self._send(pgwire.encode_backend_key_data(next(self._context.process_ids), secrets.randbits(32)))
        self._advance("authenticated")
        self._send_ready_for_query()
        await self._flush()

    def _negotiate_protocol_version(self, message: pgwire.StartupMessage) -> None:
        options_unrecognized = [name for name in message.parameters if name.startswith("_pq_.")]
        if message.protocol_version != pgwire.PROTOCOL_VERSION_3_0 or options_unrecognized:
            self._send(pgwire.encode_negotiate_protocol_version(0, options_unrecognized))

    def _parameter_statuses(self, user: str, application_name: str) -> list[tuple[str, str]]:
        return [
            ("server_version", self._context.server_version),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
            ("TimeZone", "UTC"),
            ("IntervalStyle", "postgres"),
            ("is_superuser", "on"),
            ("session_authorization", user),
            ("application_name", application_name),
        ]

    # The simple query protocol.

    async def _on_query(self, message: pgwire.Query) -> None:
        self._statements.pop("", None)  # a simple Query drops the unnamed statement and portal
        self._portals.pop("", None)
        try:
            await self._run_script(message.sql)
        except ClientGone:
            raise
        except Exception as error:
            self._send_error(error)
        self._send_ready_for_query()
        await self._flush()

    async def _run_script(self, sql: str) -> None:
        protocol_statement = _protocol_statement(sql)
        if protocol_statement is not None:
            self._send_protocol_statement_result(protocol_statement)
            return
        assert self._session is not None
        statements = await _settled(self._session.prepare_script(sql))
        if not statements:
            self._send(pgwire.encode_empty_query_response())
        for statement in statements:
            result = await self._session.execute(statement, [])
            if result.copy_in is not None:
                result = await self._copy_in(result.copy_in)
            elif result.copy_out is not None:
                await self._copy_out(result.copy_out)
            columns = result.columns if result.columns is not None else statement.columns
            if columns is not None:
                formats = [pgwire.TEXT_FORMAT] * len(columns)
                self._send(pgwire.encode_row_description(columns, formats))
                await self._send_rows(pgwire.RowEncoder(columns, formats), result.rows)
            self._send(pgwire.encode_command_complete(result.tag))

    async def _send_rows(self, encoder: pgwire.RowEncoder, rows: list[tuple]) -> None:
        for row in rows:
            self._send(encoder.encode(row))
            await self._flush_if_full()

    # COPY (55.2.6, COPY Operations).

    async def _next_message(self) -> pgwire.FrontendMessage:
        """The client's next message, read here rather than by _serve_messages: COPY FROM STDIN."""
        while (message := self._decoder.next_message()) is None:
            data = await self._read()
            if not data:
                raise ClientGone("the client closed the connection during COPY")
            self._decoder.receive(data)
        return message

    async def _copy_in(self, copy: CopyIn) -> Result:
        """Stream the client's CopyData into `copy` until CopyDone; CopyFail or another message
        aborts it. Flush and Sync are ignored meanwhile, as PostgreSQL does."""
        format_code = pgwire.BINARY_FORMAT if copy.binary else pgwire.TEXT_FORMAT
        self._send(pgwire.encode_copy_in_response(copy.column_count, format_code))
        await self._flush()
        while True:
            message = await self._next_message()  # a lost connection ends here; Session.close rolls back
            if isinstance(message, pgwire.CopyData):
                await copy.write(message.data)
            elif isinstance(message, pgwire.CopyDone):
                return await copy.finish()
            elif isinstance(message, (pgwire.Flush, pgwire.Sync)):
                continue
            elif isinstance(message, pgwire.CopyFail):
                raise await copy.fail(QueryCanceled(f"COPY from stdin failed: {message.message}"))
            else:
                error = await copy.fail(errors.ProtocolViolation(
                    f"unexpected message type {type(message).__name__} during COPY from stdin"))
                if isinstance(message, pgwire.Terminate):
                    self._advance("close")
                    raise ClientGone("the client terminated during COPY")
                raise error

    async def _copy_out(self, copy: CopyOut) -> None:
        format_code = pgwire.BINARY_FORMAT if copy.binary else pgwire.TEXT_FORMAT
        self._send(pgwire.encode_copy_out_response(copy.column_count, format_code))
        for chunk in copy.chunks:
            self._send(pgwire.encode_copy_data(chunk))
            await self._flush_if_full()
        self._send(pgwire.encode_copy_done())

    async def _on_stray_copy_message(self, message: pgwire.CopyMessage) -> None:
        """CopyData, CopyDone or CopyFail after a COPY ended (on an error): dropped, as PostgreSQL does."""

    def _send_protocol_statement_result(self, statement: EmptyStatement | DeallocateStatement) -> None:
        if isinstance(statement, EmptyStatement):
            self._send(pgwire.encode_empty_query_response())
        else:
            self._send(pgwire.encode_command_complete(self._deallocate(statement).tag))

    def _deallocate(self, statement: DeallocateStatement) -> Result:
        if statement.name is None:
            self._statements.clear()
            return Result(tag="DEALLOCATE ALL")
        if self._statements.pop(statement.name, None) is None:
            raise errors.InvalidPreparedStatement(f'prepared statement "{statement.name}" does not exist')
        return Result(tag="DEALLOCATE")

    # The extended query protocol.

    async def _on_parse(self, message: pgwire.Parse) -> None:
        name = message.statement_name
        if name and name in self._statements:
            raise DuplicatePreparedStatement(f'prepared statement "{name}" already exists')
        if len(self._statements) >= PGWIRE_PREPARED_STATEMENTS_MAX and name not in self._statements:
            raise errors.ProgramLimitExceeded(f"more than {PGWIRE_PREPARED_STATEMENTS_MAX} prepared statements")
        assert self._session is not None
        statement = _protocol_statement(message.sql)
        if statement is None:
            statement = await _settled(self._session.prepare(message.sql, message.param_oids))
        self._statements[name] = statement
        self._send(pgwire.encode_parse_complete())

    def _statement(self, name: str) -> Statement:
        statement = self._statements.get(name)
        if statement is None:
            which = f'prepared statement "{name}"' if name else "unnamed prepared statement"
            raise errors.InvalidPreparedStatement(f"{which} does not exist")
        return statement

    def _portal(self, name: str) -> Portal:
        portal = self._portals.get(name)
        if portal is None:
            raise errors.InvalidCursorName(f'portal "{name}" does not exist')
        return portal

    async def _on_bind(self, message: pgwire.Bind) -> None:
        statement = self._statement(message.statement_name)
        name = message.portal_name
        if name and name in self._portals:
            raise DuplicateCursor(f'portal "{name}" already exists')
        if len(self._portals) >= PGWIRE_PORTALS_MAX and name not in self._portals:
            raise errors.ProgramLimitExceeded(f"more than {PGWIRE_PORTALS_MAX} portals")
        params = pgwire.decode_parameters(message.param_values, message.param_formats, statement.param_oids,
                                          statement_name=message.statement_name)
        formats = pgwire.result_formats(statement.columns, message.result_formats)
        self._portals[name] = Portal(statement, params, formats)
        self._send(pgwire.encode_bind_complete())

    async def _on_describe(self, message: pgwire.Describe) -> None:
        if message.kind == "S":
            statement = self._statement(message.name)
            self._send(pgwire.encode_parameter_description(statement.param_oids))
            columns, formats = statement.columns, [pgwire.TEXT_FORMAT] * len(statement.columns or ())
        else:
            portal = self._portal(message.name)
            columns, formats = portal.statement.columns, portal.formats
        if columns is None:
            self._send(pgwire.encode_no_data())
        else:
            self._send(pgwire.encode_row_description(columns, formats))

    async def _on_execute(self, message: pgwire.Execute) -> None:
        portal = self._portal(message.portal_name)
        statement = portal.statement
        if isinstance(statement, EmptyStatement):
            self._send(pgwire.encode_empty_query_response())
            return
        if portal.result is None:
            result = await self._run_statement(statement, portal.params, self._decoder.next_is_sync())
            if result.copy_in is not None:
                result = await self._copy_in(result.copy_in)
            elif result.copy_out is not None:
                await self._copy_out(result.copy_out)
            portal.result = result
        elif statement.columns is None:
            raise ObjectNotInPrerequisiteState(f'portal "{message.portal_name}" cannot be run')
        if statement.columns is None:
            self._send(pgwire.encode_command_complete(portal.result.tag))
        else:
            await self._send_portal_rows(portal, statement.columns, message.rows_max)

    async def _run_statement(self, statement: Statement, params: list[Any], sync_follows: bool) -> Result:
        if isinstance(statement, DeallocateStatement):
            return self._deallocate(statement)
        assert self._session is not None
        return await self._session.execute(statement, params, sync_follows=sync_follows)

    async def _send_portal_rows(self, portal: Portal, columns: list[Column], rows_max: int) -> None:
        """Send the next rows_max rows (all when 0). Like PostgreSQL, a batch that fills rows_max
        suspends the portal even when no row is left; the next Execute then completes it."""
        assert portal.result is not None
        rows = portal.result.rows
        start = portal.rows_sent
        end = len(rows) if rows_max == 0 else min(start + rows_max, len(rows))
        await self._send_rows(pgwire.RowEncoder(columns, portal.formats), rows[start:end])
        portal.rows_sent = end
        if rows_max and end - start == rows_max:
            self._send(pgwire.encode_portal_suspended())
            return
        tag = portal.result.tag
        if start > 0 and tag.startswith("SELECT"):  # a resumed portal counts the rows of this Execute
            tag = f"SELECT {end - start}"
        self._send(pgwire.encode_command_complete(tag))

    async def _on_close(self, message: pgwire.Close) -> None:
        if message.kind == "S":
            self._statements.pop(message.name, None)
        else:
            self._portals.pop(message.name, None)
        self._send(pgwire.encode_close_complete())

    async def _on_sync(self, message: pgwire.Sync) -> None:
        """Sync ends the extended protocol's implicit transaction: it commits unless an error ended it."""
        failed = self.phase is Phase.SKIPPING_TO_SYNC
        self._advance("sync")
        assert self._session is not None
        try:
            await self._session.sync(failed=failed)
        except ClientGone:
            raise
        except Exception as error:
            self._send_error(error)
        if self._session.transaction_status == "I":  # the transaction ended: its portals go with it
            self._portals.clear()
        self._send_ready_for_query()
        await self._flush()

    async def _on_flush(self, message: pgwire.Flush) -> None:
        await self._flush()

    async def _on_terminate(self, message: pgwire.Terminate) -> None:
        self._advance("close")
