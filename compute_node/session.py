"""One client session: its transaction block state machine and its statements.

States (PostgreSQL's): idle 'I', in a block 'T', in a failed block 'E'. An error inside a block
fails the block until ROLLBACK (or COMMIT, which then rolls back); an error outside a block
aborts the implicit transaction. The statements of one simple-query string share one implicit
transaction (committed after the last, rolled back whole on an error), as in PostgreSQL. A commit is answered only after VDL >= its commit LSN; until
then its transaction id stays active, so no other snapshot can see what recovery might lose.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import re

from aurora_db.errors import DatabaseError, InFailedTransaction, InternalError, QuorumTimeout
from compute_node import sql_types as t
from compute_node.backend import Column, Result, TEXT_OID
from compute_node.engine import Engine
from compute_node.executor import Plan

log = logging.getLogger(__name__)

_TRANSACTION_CONTROL = re.compile(
    r"^\s*(begin|start\s+transaction|commit|end|rollback|abort)(\s+(work|transaction))?(\s+isolation\s+level\s+[a-z ]+|\s+read\s+(write|only))*\s*;?\s*$",
    re.IGNORECASE)
_SET = re.compile(r"^\s*set\s+(session\s+|local\s+)?([a-z_][a-z0-9_.]*)\s*(=|\s+to\s+)\s*(.+?)\s*;?\s*$", re.IGNORECASE | re.S)
_SHOW = re.compile(r"^\s*show\s+([a-z_][a-z0-9_.]*)\s*;?\s*$", re.IGNORECASE)

class BlockState(enum.Enum):
    """The transaction block state, with the status byte ReadyForQuery reports."""

    IDLE = "I"
    IN_BLOCK = "T"
    FAILED = "E"


BLOCK_TRANSITIONS = {
    (BlockState.IDLE, "begin"): BlockState.IN_BLOCK,
    (BlockState.IN_BLOCK, "begin"): BlockState.IN_BLOCK,  # PostgreSQL warns and stays in the block
    (BlockState.FAILED, "begin"): BlockState.FAILED,
    (BlockState.IDLE, "error"): BlockState.IDLE,  # the implicit transaction is rolled back
    (BlockState.IN_BLOCK, "error"): BlockState.FAILED,
    (BlockState.IDLE, "end"): BlockState.IDLE,  # COMMIT or ROLLBACK
    (BlockState.IN_BLOCK, "end"): BlockState.IDLE,
    (BlockState.FAILED, "end"): BlockState.IDLE,
}


DEFAULT_SETTINGS = {
    "server_version": "15.0", "server_encoding": "UTF8", "client_encoding": "UTF8", "datestyle": "ISO, MDY",
    "timezone": "UTC", "transaction_isolation": "read committed", "default_transaction_isolation": "read committed",
    "standard_conforming_strings": "on", "integer_datetimes": "on", "application_name": "", "search_path": '"$user", public',
    "statement_timeout": "0", "extra_float_digits": "1", "intervalstyle": "postgres",
}


@dataclasses.dataclass
class Statement:
    """A prepared statement: transaction control, SET/SHOW, or a planned SQL statement."""

    sql: str
    kind: str  # begin commit rollback set show sql empty
    param_oids: list[int]
    columns: list[Column] | None
    node: object = None
    plan: Plan | None = None
    param_types: list[str] = dataclasses.field(default_factory=list)
    setting: tuple = ()
    in_script: bool = False  # one of several statements of one simple-query string
    ends_script: bool = False  # the last of them: the implicit transaction commits after it


def split_statements(sql: str) -> list[str]:
    """Split a simple-query string at semicolons outside quotes, identifiers and comments."""
    statements, current, i, n = [], [], 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:
                        end += 2
                        continue
                    break
                end += 1
            current.append(sql[i:end + 1])
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            current.append(sql[i:end])
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            current.append(sql[i:end])
            i = end
        elif ch == ";":
            statements.append("".join(current))
            current = []
            i += 1
        else:
            current.append(ch)
            i += 1
    statements.append("".join(current))
    return [s for s in statements if _strip_comments(s).strip()]


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", "", sql, flags=re.S)


class EngineSession:
    """backend.Session over the Engine."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.state = BlockState.IDLE
        self.xid: int | None = None
        self.settings = dict(DEFAULT_SETTINGS)

    @property
    def transaction_status(self) -> str:
        return self.state.value

    def _transition(self, event: str) -> None:
        self.state = BLOCK_TRANSITIONS[(self.state, event)]  # a missing pair is a bug: KeyError

    # --- prepare ------------------------------------------------------------------------------

    async def prepare_script(self, sql: str) -> list[Statement]:
        """Statements of a simple query, planned only when run: an earlier one may create a table."""
        texts = split_statements(sql)
        several = len(texts) > 1
        return [Statement(text, "deferred", [], None, in_script=several, ends_script=several and i == len(texts) - 1)
                for i, text in enumerate(texts)]

    async def prepare(self, sql: str, param_oids: list[int]) -> Statement:
        text = _strip_comments(sql).strip()
        if not text:
            return Statement(sql, "empty", [], None)
        match = _TRANSACTION_CONTROL.match(text)
        if match:
            word = match.group(1).lower().split()[0]
            kind = {"start": "begin", "end": "commit", "abort": "rollback"}.get(word, word)
            return Statement(sql, kind, [], None)
        match = _SET.match(text)
        if match:
            value = match.group(4).strip().strip("'\"")
            return Statement(sql, "set", [], None, setting=(match.group(2).lower(), value))
        match = _SHOW.match(text)
        if match:
            name = match.group(1).lower()
            return Statement(sql, "show", [], [Column(name, TEXT_OID)], setting=(name,))
        if self.state is BlockState.FAILED:
            raise InFailedTransaction("current transaction is aborted, commands ignored until end of transaction block")
        param_types = [t.NAMES_BY_OID.get(oid, "unknown") if oid else "unknown" for oid in param_oids]
        node, plan, types = await self.engine.call(self.engine.prepare, sql, param_types, self.xid)
        oids = [t.OIDS[name] if name != "unknown" else TEXT_OID for name in types]
        return Statement(sql, "sql", oids, plan.columns, node, plan, types)

    # --- execute ------------------------------------------------------------------------------

    async def execute(self, statement: Statement, params: list) -> Result:
        if statement.kind == "deferred":
            prepared = await self.prepare(statement.sql, [])
            prepared.in_script, prepared.ends_script = statement.in_script, statement.ends_script
            statement.__dict__.update(prepared.__dict__)
        result = await self._execute(statement, params)
        if statement.ends_script and self.state is BlockState.IDLE and self.xid is not None:
            await self._commit()  # the script's implicit transaction, if its last statement left it open
        return result

    async def _execute(self, statement: Statement, params: list) -> Result:
        kind = statement.kind
        if kind == "empty":
            return Result("")
        if kind == "begin":
            self._transition("begin")
            return Result("BEGIN")
        if kind == "commit":
            if self.state is BlockState.FAILED:
                await self._rollback()
                return Result("ROLLBACK")
            await self._commit()
            return Result("COMMIT")
        if kind == "rollback":
            await self._rollback()
            return Result("ROLLBACK")
        if self.state is BlockState.FAILED:
            raise InFailedTransaction("current transaction is aborted, commands ignored until end of transaction block")
        if kind == "set":
            name, value = statement.setting
            self.settings[name] = value
            return Result("SET")
        if kind == "show":
            (name,) = statement.setting
            return Result("SHOW", statement.columns, [(self.settings.get(name, ""),)])
        implicit = self.state is BlockState.IDLE
        autocommit = implicit and (not statement.in_script or statement.ends_script)
        try:
            statement.plan, result, commit_lsn = await self.engine.call(
                self.engine.run, statement.node, statement.plan, statement.param_types, params, self, autocommit)
        except Exception as error:
            if implicit:
                await self._rollback()
            self._transition("error")
            if isinstance(error, DatabaseError):
                raise
            log.exception("internal error in %r", statement.sql[:200])
            raise InternalError(f"internal error: {type(error).__name__}: {error}") from error
        if commit_lsn is not None:
            xid, self.xid = self.xid, None
            await self._wait_commit_durable(xid, commit_lsn)
        return result

    def ensure_xid(self) -> int:
        """Called on the engine thread when a statement first writes."""
        if self.xid is None:
            self.xid = self.engine.begin_xid()
        return self.xid

    async def _commit(self) -> None:
        xid, self.xid = self.xid, None
        self._transition("end")
        if xid is None:
            return
        commit_lsn = await self.engine.call(self.engine.write_commit, xid)
        await self._wait_commit_durable(xid, commit_lsn)

    async def _wait_commit_durable(self, xid: int, commit_lsn: int) -> None:
        """Answer the commit only once VDL >= its commit LSN (DESIGN.md 3)."""
        try:
            await self.engine.log_writer.wait_durable(commit_lsn)
        except QuorumTimeout:
            # The client is told the outcome is unknown; the commit may still become durable, and
            # then its rows must become visible: keep waiting in the background.
            asyncio.get_running_loop().create_task(self._finish_when_durable(xid, commit_lsn))
            raise
        self.engine.transactions.finish(xid)

    async def _finish_when_durable(self, xid: int, commit_lsn: int) -> None:
        while True:
            try:
                await self.engine.log_writer.wait_durable(commit_lsn)
            except QuorumTimeout:
                continue
            except DatabaseError:  # fenced: a new writer's recovery decides this transaction
                return
            self.engine.transactions.finish(xid)
            return

    async def _rollback(self) -> None:
        xid, self.xid = self.xid, None
        self._transition("end")
        if xid is not None:
            await self.engine.call(self.engine.write_abort, xid)

    async def close(self) -> None:
        if self.xid is not None:
            try:
                await self._rollback()
            except DatabaseError as error:
                log.warning("rollback at disconnect failed: %s", error)
