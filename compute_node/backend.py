"""The contract between the PostgreSQL protocol server and the SQL engine.

The protocol layer (pg_server.py) decodes messages and parameter values; a Session turns SQL
into Statements and runs them. Values cross this boundary as Python objects: int, float, str,
bool, decimal.Decimal, datetime.date/datetime, bytes, or None for NULL.
Invariant: a Statement's `columns` are known before it runs (Describe needs them), and running it
yields rows whose values match those columns' types.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Protocol

# PostgreSQL type OIDs used across the protocol and the engine.
BOOL_OID = 16
BYTEA_OID = 17
INT8_OID = 20
INT2_OID = 21
INT4_OID = 23
TEXT_OID = 25
OID_OID = 26
FLOAT4_OID = 700
FLOAT8_OID = 701
UNKNOWN_OID = 705
VARCHAR_OID = 1043
NUMERIC_OID = 1700

TYPE_SIZES = {BOOL_OID: 1, INT2_OID: 2, INT4_OID: 4, INT8_OID: 8, FLOAT4_OID: 4, FLOAT8_OID: 8}


@dataclasses.dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    table_oid: int = 0
    column_number: int = 0
    type_modifier: int = -1

    @property
    def type_size(self) -> int:
        return TYPE_SIZES.get(self.type_oid, -1)


class CopyIn(Protocol):
    """COPY ... FROM STDIN under way: the protocol layer feeds it the client's CopyData.
    Exactly one of finish() and fail() is called, unless the connection is lost (then Session.close)."""

    column_count: int
    binary: bool  # the binary COPY format, else text

    async def write(self, data: bytes) -> None:
        """One CopyData message's bytes (rows may span messages); raises DatabaseError."""

    async def finish(self) -> "Result":
        """CopyDone: the rest of the rows, then the statement's result ("COPY n"); raises DatabaseError."""

    async def fail(self, error: Exception) -> Exception:
        """CopyFail or a protocol error: abort the COPY; returns the error to report."""


@dataclasses.dataclass(slots=True)
class CopyOut:
    """COPY ... TO STDOUT: the data, one CopyData message per item."""

    column_count: int
    chunks: Iterable[bytes]
    binary: bool = False  # the binary COPY format, else text


@dataclasses.dataclass(slots=True)
class Result:
    """What one statement produced. `tag` is the CommandComplete tag ("SELECT 3", "INSERT 0 1").
    A COPY's result carries copy_in (the protocol streams the client's data into it, then sends
    what its finish() returns) or copy_out (the protocol sends its chunks, then `tag`)."""

    tag: str
    columns: list[Column] | None = None
    rows: list[tuple] = dataclasses.field(default_factory=list)
    copy_in: CopyIn | None = None
    copy_out: CopyOut | None = None


class Statement(Protocol):
    """One parsed statement, ready to run any number of times."""

    param_oids: list[int]  # one per $n; never 0 once prepared (unknown parameters default to text)
    columns: list[Column] | None  # None: the statement returns no rows (Describe answers NoData)


class Session(Protocol):
    """One client connection's state: its transaction, its prepared statements' engine side."""

    @property
    def transaction_status(self) -> str:
        """'I' idle, 'T' in a transaction block, 'E' in a failed transaction block."""

    async def prepare(self, sql: str, param_oids: list[int]) -> Statement:
        """Parse and plan exactly one statement (Parse message); raises DatabaseError.
        Async: planning may read catalog pages from storage."""

    async def prepare_script(self, sql: str) -> list[Statement]:
        """Split a simple-query string into its statements; [] for an empty query. Each is
        planned when it runs, since an earlier one may create the table a later one uses."""

    async def execute(self, statement: Statement, params: list[Any], *, sync_follows: bool = False) -> Result:
        """Run a statement; raises DatabaseError, after which the transaction status says what happened.
        A statement of the extended protocol outside a transaction block runs in an implicit
        transaction that lasts until sync(); `sync_follows` says Sync is next, so it may commit at once."""

    async def sync(self, *, failed: bool = False) -> None:
        """The extended protocol's Sync: commit the implicit transaction, if one is open; raises
        DatabaseError. `failed`: a message since the last Sync failed, so the implicit transaction
        rolls back and an open block fails, as any error does in PostgreSQL."""

    async def close(self) -> None:
        """The client went away: roll back any open transaction."""
