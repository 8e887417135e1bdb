"""A torture client's connections, and what an error says about an operation's outcome.

An operation certainly did not happen ("fail") when the database said so: a serialization failure
or deadlock (40001, 40P01), a constraint violation, a read-only transaction, a COMMIT answered
with ROLLBACK; or when anything went wrong before a statement that could commit was sent. Its
outcome is unknown ("info") when, after that, the connection broke, the client gave up waiting, or
the error was one that does not say the transaction ended (08006 "outcome unknown", a shutdown). A client never retries an operation: the
history must show exactly what was tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import psycopg

from aurora_db.torture.history import FAIL, INFO

CONNECT_TIMEOUT_S = 5
CLOSE_TIMEOUT_S = 2
# SQLSTATE classes that say the statement, and so its transaction, did not take effect: transaction
# rollback (40001, 40P01), integrity (23), transaction state (25: read-only), data (22), syntax or
# access (42), unsupported (0A). Any other error after a write was sent (08 connection, 57 operator
# intervention, XX internal) leaves the outcome unknown.
SQLSTATE_CLASSES_DEFINITE = frozenset({"40", "23", "25", "22", "42", "0A"})


class Rejected(Exception):
    """The database refused the operation as the workload expects it may (a compare-and-set that
    found another value, a transfer without funds): it certainly did not happen."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(slots=True)
class Progress:
    """How far an operation got: once `sent` is set, what it wrote may have committed."""
    sent: bool = False


def outcome_of(error: BaseException, progress: Progress) -> tuple[str, str]:
    """("fail" or "info", a short description) for an operation that ended with `error`."""
    if isinstance(error, Rejected):
        return FAIL, error.reason
    sqlstate = getattr(error, "sqlstate", None)
    text = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    if sqlstate and sqlstate[:2] in SQLSTATE_CLASSES_DEFINITE:
        return FAIL, f"{sqlstate} {text}"
    return (INFO if progress.sent else FAIL), (f"{sqlstate} {text}" if sqlstate else text)


class Connections:
    """A client's connection to the writer endpoint and one to the reader endpoint, opened on first
    use. After any error both are dropped: a connection whose state is unknown is never reused."""

    def __init__(self, writer_url: str, reader_url: str | None):
        self.writer_url = writer_url
        self.reader_url = reader_url
        self._open: dict[str, psycopg.AsyncConnection] = {}

    async def writer(self) -> psycopg.AsyncConnection:
        return await self._get(self.writer_url)

    async def reader(self) -> psycopg.AsyncConnection:
        return await self._get(self.reader_url or self.writer_url)

    async def _get(self, url: str) -> psycopg.AsyncConnection:
        connection = self._open.get(url)
        if connection is None or connection.closed:
            connection = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            self._open[url] = connection
        return connection

    async def drop(self) -> None:
        connections, self._open = list(self._open.values()), {}
        for connection in connections:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await connection.close()


async def commit(connection: psycopg.AsyncConnection, progress: Progress) -> None:
    """COMMIT an open transaction; a transaction the server rolled back instead raises Rejected."""
    progress.sent = True
    cursor = await connection.execute("COMMIT")
    if cursor.statusmessage != "COMMIT":
        raise Rejected(f"COMMIT answered {cursor.statusmessage}")


async def rollback(connection: psycopg.AsyncConnection) -> None:
    await connection.execute("ROLLBACK")
