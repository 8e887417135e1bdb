"""One client session: its transaction block state machine and its statements.

States (PostgreSQL's): idle 'I', in a block 'T', in a failed block 'E'. An error inside a block
fails the block until ROLLBACK (or COMMIT, which then rolls back); an error outside a block
aborts the implicit transaction. The statements of one simple-query string share one implicit
transaction (committed after the last, rolled back whole on an error), and so do the extended
protocol's statements up to Sync, as in PostgreSQL. A commit is answered only after VDL >= its
commit LSN; until then its transaction id stays active, so no other snapshot can see what recovery
might lose. COPY FROM STDIN inserts in batches in the same transaction; savepoints are names only
(no subtransactions), so ROLLBACK TO one is refused once anything was written after it.
Isolation (PostgreSQL's): READ COMMITTED takes a snapshot per statement, REPEATABLE READ (and
SERIALIZABLE, run as it) one per transaction, at its first statement. A statement that meets a row
lock waits here, on the loop, for the holder to end, then runs again (transactions.py); an error in
a block without savepoints aborts the transaction at once, so its row locks are released then.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import re

from aurora_db.constants import SERVER_VERSION
from aurora_db.errors import (DatabaseError, FeatureNotSupported, InFailedTransaction, InternalError,
                              InvalidParameterValue, QuorumTimeout, ReadOnlyTransaction, SyntaxError_)
from compute_node import copy as copy_text
from compute_node import introspection
from compute_node import sql_types as t
from compute_node.backend import Column, CopyOut, Result, TEXT_OID
from compute_node.engine import Engine, StalePlan, check_result_type
from compute_node.executor import Plan
from compute_node.replica import READ_ONLY_MESSAGE
from compute_node.transactions import ROW_LOCK_WAIT_MS_MAX, SNAPSHOT_PER_TRANSACTION, LockNotAvailable, RowLockWait

log = logging.getLogger(__name__)

_TRANSACTION_CONTROL = re.compile(
    r"^\s*(begin|start\s+transaction|commit|end|rollback|abort)(\s+(work|transaction))?(\s+isolation\s+level\s+[a-z ]+|\s+read\s+(write|only))*\s*;?\s*$",
    re.IGNORECASE)
_SET = re.compile(r"^\s*set\s+(session\s+|local\s+)?([a-z_][a-z0-9_.]*)\s*(=|\s+to\s+)\s*(.+?)\s*;?\s*$", re.IGNORECASE | re.S)
_SHOW = re.compile(r"^\s*show\s+([a-z_][a-z0-9_.]*|transaction\s+isolation\s+level)\s*;?\s*$", re.IGNORECASE)
_SAVEPOINT = re.compile(r'^\s*(savepoint|release(?:\s+savepoint)?|rollback(?:\s+work|\s+transaction)?\s+to(?:\s+savepoint)?)'
                        r'\s+("(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)\s*;?\s*$', re.IGNORECASE)
_SHOW_ALIASES = {"transaction isolation level": "transaction_isolation"}
_ISOLATION_LEVEL = r"(serializable|repeatable\s+read|read\s+committed|read\s+uncommitted)"
_BEGIN_ISOLATION = re.compile(r"isolation\s+level\s+" + _ISOLATION_LEVEL, re.IGNORECASE)
_SET_TRANSACTION = re.compile(r"^\s*set\s+(session\s+characteristics\s+as\s+)?transaction\s+isolation\s+level\s+"
                              + _ISOLATION_LEVEL + r"(\s*,?\s*read\s+(write|only))?\s*;?\s*$", re.IGNORECASE)
ISOLATION_LEVELS = ("read uncommitted", "read committed", "repeatable read", "serializable")
_RESET = re.compile(r"^\s*reset\s+(all|[a-z_][a-z0-9_.]*)\s*;?\s*$", re.IGNORECASE)
# Session cleanup that connection pools send (asyncpg's reset query), for features we do not have:
# without cursors, notifications or advisory locks there is nothing to close, unlisten or unlock.
_NO_OPS = {"close all": "CLOSE CURSOR ALL", "unlisten *": "UNLISTEN"}
# VACUUM prunes every page and removes the index entries of pruned rows (compute_node/heap.py;
# writes prune as they go too); ANALYZE has nothing to do (there are no statistics).
_MAINTENANCE = re.compile(r"^\s*(vacuum|analy[sz]e)\b[^;]*;?\s*$", re.IGNORECASE)
_VACUUM_OPTIONS = re.compile(r"^\s*vacuum\b\s*(\([^)]*\))?\s*(?:(?:full|freeze|verbose|analy[sz]e)\b\s*)*", re.IGNORECASE)
_VACUUM_TABLE = re.compile(r'^\s*(?:(?:public|"public")\.)?("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)\s*$')


def vacuum_tables(sql: str) -> list[str]:
    """The tables a VACUUM statement names (none: every table). Its options change nothing here:
    VACUUM prunes and cleans indexes (heap.py); FULL, FREEZE and ANALYZE have nothing more to do."""
    text = sql.strip().rstrip(";")
    rest = re.sub(r"\([^)]*\)", "", text[_VACUUM_OPTIONS.match(text).end():])  # a table's column list
    names = []
    for part in filter(None, (item.strip() for item in rest.split(","))):
        match = _VACUUM_TABLE.match(part)
        if match is None:
            raise SyntaxError_(f'syntax error at or near "{part.split()[0]}"')
        name = match.group(1)
        names.append(name[1:-1].replace('""', '"') if name.startswith('"') else name.lower())
    return names


class NoActiveSqlTransaction(DatabaseError):
    sqlstate = "25P01"


class InvalidSavepointSpecification(DatabaseError):
    sqlstate = "3B001"


class ActiveSqlTransaction(DatabaseError):
    sqlstate = "25001"


def _isolation(text: str) -> str:
    level = " ".join(text.lower().split())
    level = "read committed" if level == "default" else level
    if level not in ISOLATION_LEVELS:
        raise InvalidParameterValue(f'invalid value for parameter "transaction_isolation": "{text}"',
                                    hint='Available values: serializable, repeatable read, read committed, read uncommitted.')
    return level


def _lock_timeout_ms(value: str) -> int:
    """lock_timeout as PostgreSQL reads it ('0' is no limit of its own): milliseconds, or a unit."""
    match = re.fullmatch(r"\s*(\d+)\s*(ms|s|min)?\s*", value or "0")
    if not match:
        return 0
    return int(match.group(1)) * {None: 1, "ms": 1, "s": 1000, "min": 60_000}[match.group(2)]


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
    (BlockState.FAILED, "error"): BlockState.FAILED,
    (BlockState.IDLE, "end"): BlockState.IDLE,  # COMMIT or ROLLBACK
    (BlockState.IN_BLOCK, "end"): BlockState.IDLE,
    (BlockState.FAILED, "end"): BlockState.IDLE,
    (BlockState.IN_BLOCK, "rollback_to_savepoint"): BlockState.IN_BLOCK,
    (BlockState.FAILED, "rollback_to_savepoint"): BlockState.IN_BLOCK,
}


DEFAULT_SETTINGS = {
    "server_version": SERVER_VERSION, "server_encoding": "UTF8", "client_encoding": "UTF8", "datestyle": "ISO, MDY",
    "timezone": "UTC", "transaction_isolation": "read committed", "default_transaction_isolation": "read committed",
    "standard_conforming_strings": "on", "integer_datetimes": "on", "application_name": "", "search_path": '"$user", public',
    "statement_timeout": "0", "extra_float_digits": "1", "intervalstyle": "postgres",
    "transaction_read_only": "off", "default_transaction_read_only": "off", "in_hot_standby": "off",
}
READER_SETTINGS = {**DEFAULT_SETTINGS, "transaction_read_only": "on", "default_transaction_read_only": "on",
                   "in_hot_standby": "on"}  # a reader, as PostgreSQL's hot standby shows itself


def command_name(sql: str, kind: str) -> str:
    """The command as PostgreSQL names it in "cannot execute X in a read-only transaction"."""
    if kind == "copy_in":
        return "COPY FROM"
    words = [word.upper() for word in sql.split()[:6]]
    if not words:
        return "statement"
    if words[0] in ("CREATE", "DROP", "ALTER"):
        objects = [w for w in words[1:] if w not in ("UNIQUE", "OR", "REPLACE", "TEMP", "TEMPORARY")]
        return f"{words[0]} {objects[0]}" if objects else words[0]
    return words[0]


@dataclasses.dataclass
class Statement:
    """A prepared statement: transaction control, SET/SHOW, or a planned SQL statement."""

    sql: str
    kind: str  # begin commit rollback savepoint release rollback_to set show reset no_op sql copy_in copy_out canned empty
    param_oids: list[int]
    columns: list[Column] | None
    node: object = None
    plan: Plan | None = None
    param_types: list[str] = dataclasses.field(default_factory=list)
    setting: tuple = ()
    in_script: bool = False  # one of several statements of one simple-query string
    ends_script: bool = False  # the last of them: the implicit transaction commits after it
    extended: bool = True  # prepared by Parse: outside a block, its implicit transaction ends at Sync
    copy: copy_text.CopySpec | None = None
    canned: introspection.Canned | None = None
    bound_values: list = dataclasses.field(default_factory=list)  # a cached template's literals: its first parameters


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
        self.settings = dict(self._defaults)
        self.writes = 0  # statements run that may have written: a savepoint remembers the count
        self.savepoints: list[tuple[str, int]] = []
        self.snapshot = None  # REPEATABLE READ: the transaction's, from its first statement
        self.queried = False  # a statement of the transaction took its snapshot
        self.statement_undo: list | None = None  # the engine's, while a statement runs (write_plans.py)

    @property
    def _defaults(self) -> dict[str, str]:
        return READER_SETTINGS if self.engine.read_only else DEFAULT_SETTINGS

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
        return [Statement(text, "deferred", [], None, in_script=several, ends_script=several and i == len(texts) - 1,
                          extended=False)
                for i, text in enumerate(texts)]

    async def prepare(self, sql: str, param_oids: list[int]) -> Statement:
        text = _strip_comments(sql).strip()
        if not text:
            return Statement(sql, "empty", [], None)
        match = _TRANSACTION_CONTROL.match(text)
        if match:
            word = match.group(1).lower().split()[0]
            kind = {"start": "begin", "end": "commit", "abort": "rollback"}.get(word, word)
            level = _BEGIN_ISOLATION.search(text) if kind == "begin" else None
            return Statement(sql, kind, [], None, setting=(_isolation(level.group(1)),) if level else ())
        match = _SET_TRANSACTION.match(text)
        if match:
            scope = "default_transaction_isolation" if match.group(1) else "transaction_isolation"
            return Statement(sql, "set", [], None, setting=(scope, _isolation(match.group(2))))
        match = _SET.match(text)
        if match:
            value = match.group(4).strip().strip("'\"")
            return Statement(sql, "set", [], None, setting=(match.group(2).lower(), value))
        match = _SHOW.match(text)
        if match:
            name = " ".join(match.group(1).lower().split())
            name = _SHOW_ALIASES.get(name, name)
            return Statement(sql, "show", [], [Column(name, TEXT_OID)], setting=(name,))
        match = _RESET.match(text)
        if match:
            return Statement(sql, "reset", [], None, setting=(match.group(1).lower(),))
        no_op = _NO_OPS.get(" ".join(text.rstrip(";").lower().split()))
        if no_op is not None:
            return Statement(sql, "no_op", [], None, setting=(no_op,))
        match = _MAINTENANCE.match(text)
        if match:
            word = match.group(1).upper().replace("ANALYSE", "ANALYZE")
            return Statement(sql, "maintenance", [], None, setting=(word,))
        match = _SAVEPOINT.match(text)
        if match:
            word = match.group(1).lower().split()[0]
            kind = {"savepoint": "savepoint", "release": "release", "rollback": "rollback_to"}[word]
            name = match.group(2)
            name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
            return Statement(sql, kind, [], None, setting=(name,))
        if self.state is BlockState.FAILED:
            raise InFailedTransaction("current transaction is aborted, commands ignored until end of transaction block")
        canned = introspection.match(text)
        if canned is not None:
            return Statement(sql, "canned", canned.param_oids, canned.columns, canned=canned)
        if copy_text.is_copy(text):
            spec = copy_text.parse_copy(text)
            if spec.direction == "from":
                return Statement(sql, "copy_in", [], None, copy=spec)
            node, plan, types, bound = await self.engine.call_restartable(
                self.engine.prepare, copy_text.select_for_copy_to(spec), [], self.xid)
            if spec.binary:
                copy_text.binary_type_oids(plan.columns)  # refused now, not after CopyOutResponse
            return Statement(sql, "copy_out", [], None, node, plan, types, copy=spec, bound_values=bound)
        param_types = [t.NAMES_BY_OID.get(oid, "unknown") if oid else "unknown" for oid in param_oids]
        node, plan, types, bound = await self.engine.call_restartable(self.engine.prepare, sql, param_types, self.xid)
        oids = [t.OIDS[name] if name != "unknown" else TEXT_OID for name in types[len(bound):]]
        return Statement(sql, "sql", oids, plan.columns, node, plan, types, bound_values=bound)

    # --- execute ------------------------------------------------------------------------------

    async def execute(self, statement: Statement, params: list, *, sync_follows: bool = False) -> Result:
        if statement.kind == "deferred":
            try:
                prepared = await self.prepare(statement.sql, [])
            except Exception as error:  # a statement that cannot be planned fails like one that ran
                if isinstance(error, InFailedTransaction):
                    raise
                raise await self._statement_failed(error, self.state is BlockState.IDLE, statement.sql) from None
            prepared.in_script, prepared.ends_script = statement.in_script, statement.ends_script
            prepared.extended = False
            statement.__dict__.update(prepared.__dict__)
        result = await self._execute(statement, params, sync_follows)
        if result.copy_in is None and self.state is BlockState.IDLE and self.xid is None:
            self._transaction_ended()  # a read-only implicit transaction
        if result.copy_in is None and statement.ends_script and self.state is BlockState.IDLE and self.xid is not None:
            await self._commit()  # the script's implicit transaction, if its last statement left it open
        return result

    async def sync(self, *, failed: bool = False) -> None:
        """Sync ends the extended protocol's implicit transaction; after an error it rolls back, and
        an error the protocol layer raised (a bad Bind, say) fails an open block too."""
        if failed:
            if self.state is BlockState.IDLE and self.xid is not None:
                await self._rollback()
            elif self.state is BlockState.IN_BLOCK:
                self._transition("error")
            return
        if self.state is BlockState.IDLE and self.xid is not None:
            await self._commit()

    def _autocommit(self, statement: Statement, sync_follows: bool) -> bool:
        """Does this statement end its implicit transaction? Only outside a block: at the end of a
        simple-query script, or in the extended protocol just before Sync."""
        if self.state is not BlockState.IDLE:
            return False
        if statement.extended:
            return sync_follows
        return not statement.in_script or statement.ends_script

    async def _execute(self, statement: Statement, params: list, sync_follows: bool = False) -> Result:
        kind = statement.kind
        if kind == "empty":
            return Result("")
        if kind == "begin":
            if self.state is BlockState.IDLE:
                self._transaction_ended()  # what an implicit transaction before it left
                if statement.setting:
                    self.settings["transaction_isolation"] = statement.setting[0]
            self._transition("begin")
            self.savepoints = []
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
        if kind in ("savepoint", "release", "rollback_to"):
            return self._savepoint(kind, statement.setting[0])
        if self.state is BlockState.FAILED:
            raise InFailedTransaction("current transaction is aborted, commands ignored until end of transaction block")
        if kind == "set":
            name, value = statement.setting
            if name in ("transaction_isolation", "default_transaction_isolation"):
                return self._set_isolation(name, _isolation(value))
            self.settings[name] = value
            return Result("SET")
        if kind == "show":
            (name,) = statement.setting
            return Result("SHOW", statement.columns, [(self.settings.get(name, ""),)])
        if kind == "reset":
            (name,) = statement.setting
            if name == "all":
                self.settings = dict(self._defaults)
            elif name in self._defaults:
                self.settings[name] = self._defaults[name]
            else:
                self.settings.pop(name, None)
            return Result("RESET")
        if kind == "no_op":
            return Result(statement.setting[0])
        if kind == "maintenance":
            (word,) = statement.setting
            if word == "VACUUM":
                if self.state is not BlockState.IDLE or statement.in_script:
                    raise ActiveSqlTransaction("VACUUM cannot run inside a transaction block")
                if self.engine.read_only:
                    raise ReadOnlyTransaction("cannot execute VACUUM during recovery")
                await self.engine.call_restartable(self.engine.vacuum, vacuum_tables(statement.sql))
            return Result(word)
        implicit = self.state is BlockState.IDLE
        autocommit = self._autocommit(statement, sync_follows)
        if self.engine.read_only and (kind == "copy_in" or kind != "canned" and getattr(statement.plan, "writes", True)):
            error = ReadOnlyTransaction(READ_ONLY_MESSAGE.format(command_name(statement.sql, kind)))
            raise await self._statement_failed(error, implicit, statement.sql)
        if kind == "copy_in":
            return await self._start_copy_in(statement, implicit, autocommit)
        try:
            if kind == "canned":
                rows = await self.engine.call_restartable(self.engine.run_canned, statement.canned, params, self)
                return Result(f"SELECT {len(rows)}", statement.columns, rows)
            if getattr(statement.plan, "writes", True):
                self.writes += 1
            try:
                statement.plan, result, commit_lsn = await self._run(statement, params, autocommit)
            except StalePlan:  # prepared again as written, then planned against this session's tables
                statement.node, statement.plan, statement.param_types, statement.bound_values = \
                    await self.engine.call_restartable(self.engine.prepare, statement.sql, [], self.xid, False)
                if statement.extended:
                    check_result_type(statement.plan, statement.columns or [])
                statement.plan, result, commit_lsn = await self._run(statement, params, autocommit)
        except Exception as error:
            raise await self._statement_failed(error, implicit, statement.sql) from None
        if commit_lsn is not None:
            xid, self.xid = self.xid, None
            await self._wait_commit_durable(xid, commit_lsn)
        if kind == "copy_out":
            spec = statement.copy
            return Result(f"COPY {len(result.rows)}", copy_out=CopyOut(
                len(result.columns), copy_text.copy_out_chunks(spec, result.columns, result.rows), spec.binary))
        return result

    async def _run(self, statement: Statement, params: list, autocommit: bool):
        params = statement.bound_values + params if statement.bound_values else params
        described = (statement.columns or []) if statement.extended else None  # what Describe told the client
        return await self.call_waiting(statement.plan.restartable, self.engine.run, statement.node, statement.plan,
                                       statement.param_types, params, self, autocommit, bool(statement.bound_values),
                                       described)

    def _set_isolation(self, name: str, level: str) -> Result:
        """SET [SESSION CHARACTERISTICS AS] TRANSACTION ISOLATION LEVEL, or the settings themselves."""
        if name == "default_transaction_isolation":
            self.settings[name] = level
            if self.state is BlockState.IDLE:
                self.settings["transaction_isolation"] = level
            return Result("SET")
        if self.state is BlockState.IDLE:
            return Result("SET")  # PostgreSQL warns that it only works in a block, and ignores it
        if self.queried or self.xid is not None:
            raise ActiveSqlTransaction("SET TRANSACTION ISOLATION LEVEL must be called before any query")
        self.settings["transaction_isolation"] = level
        return Result("SET")

    def statement_snapshot(self, transactions):
        """On the engine thread: the snapshot a statement runs with (see the module docstring)."""
        self.queried = True
        if self.settings.get("transaction_isolation") not in SNAPSHOT_PER_TRANSACTION:
            return transactions.snapshot()
        if self.snapshot is None:
            self.snapshot = transactions.snapshot()
        return self.snapshot

    def _transaction_ended(self) -> None:
        self.snapshot = None
        self.queried = False
        self.settings["transaction_isolation"] = self.settings.get("default_transaction_isolation", "read committed")

    async def call_waiting(self, restartable: bool, fn, *args):
        """Run `fn` in an engine turn (Engine.call_restartable or Engine.call); each time it meets
        a row lock (its own changes undone), wait for the holder to end and run it again."""
        ended_already = None  # a blocker that had ended when its wait began: a restart's reason
        call = self.engine.call_restartable if restartable else self.engine.call
        while True:
            try:
                return await call(fn, *args)
            except RowLockWait as wait:
                if wait.xid == ended_already:  # a bug: the restart would meet it again, forever
                    raise InternalError(f"transaction {wait.xid} ended but still holds a row") from None
                ended_already = wait.xid if await self._wait_for(wait.xid) else None

    async def _wait_for(self, blocker: int) -> bool:
        """Wait on the loop until transaction `blocker` ends: 40P01 at once if that closes a cycle
        of waits, 55P03 after lock_timeout (at most ROW_LOCK_WAIT_MS_MAX). True: it had ended."""
        transactions = self.engine.transactions
        waiter = self.xid
        future = transactions.wait_begin(waiter, blocker, asyncio.get_running_loop())
        if future.done():
            return True
        limit_ms = _lock_timeout_ms(self.settings.get("lock_timeout", "0"))
        limit_ms = min(limit_ms, ROW_LOCK_WAIT_MS_MAX) if limit_ms > 0 else ROW_LOCK_WAIT_MS_MAX
        try:
            await asyncio.wait_for(future, limit_ms / 1000)
        except asyncio.TimeoutError:
            raise LockNotAvailable("canceling statement due to lock timeout",
                                   detail=f"Transaction {waiter} waited {limit_ms} ms for transaction {blocker}.") from None
        finally:
            transactions.wait_end(waiter, blocker, future)
        return False

    async def _statement_failed(self, error: Exception, implicit: bool, sql: str) -> DatabaseError:
        """A statement failed: roll back the implicit transaction or fail the block; the error to report.
        A block without savepoints (none can be rolled back to) aborts its transaction now, as
        PostgreSQL does, so other transactions stop waiting for its rows."""
        if implicit:
            await self._rollback()
        elif self.state is BlockState.IN_BLOCK and not self.savepoints and self.xid is not None:
            xid, self.xid = self.xid, None
            await self.engine.call_restartable(self.engine.write_abort, xid)
        self._transition("error")
        if isinstance(error, DatabaseError):
            return error
        log.error("internal error in %r", sql[:200], exc_info=error)
        return InternalError(f"internal error: {type(error).__name__}: {error}")

    def _savepoint(self, kind: str, name: str) -> Result:
        """Savepoints without subtransactions: ROLLBACK TO works while nothing was written since the
        savepoint (enough for drivers that probe inside one), and fails with 0A000 otherwise."""
        if self.state is BlockState.IDLE:
            word = {"savepoint": "SAVEPOINT", "release": "RELEASE SAVEPOINT", "rollback_to": "ROLLBACK TO SAVEPOINT"}[kind]
            raise NoActiveSqlTransaction(f"{word} can only be used in transaction blocks")
        if kind == "savepoint":
            if self.state is BlockState.FAILED:
                raise InFailedTransaction("current transaction is aborted, commands ignored until end of transaction block")
            self.savepoints.append((name, self.writes))
            return Result("SAVEPOINT")
        found = [i for i, (saved, _) in enumerate(self.savepoints) if saved == name]
        if not found:
            if self.state is BlockState.FAILED:
                raise InFailedTransaction("current transaction is aborted, commands ignored until end of transaction block")
            raise InvalidSavepointSpecification(f'savepoint "{name}" does not exist')
        index = found[-1]
        if kind == "release":
            if self.state is BlockState.FAILED:
                raise InFailedTransaction("current transaction is aborted, commands ignored until end of transaction block")
            del self.savepoints[index:]
            return Result("RELEASE")
        if self.writes != self.savepoints[index][1]:
            raise FeatureNotSupported("ROLLBACK TO SAVEPOINT after a write since the savepoint is not supported yet")
        del self.savepoints[index + 1:]
        self._transition("rollback_to_savepoint")
        return Result("ROLLBACK")

    # --- COPY FROM STDIN ------------------------------------------------------------------------

    async def _start_copy_in(self, statement: Statement, implicit: bool, autocommit: bool) -> Result:
        try:
            target = await self.engine.call_restartable(self.engine.copy_target, statement.copy, self)
        except Exception as error:
            raise await self._statement_failed(error, implicit, statement.sql) from None
        self.writes += 1
        return Result("COPY", copy_in=CopyInSink(self, statement, target, implicit, autocommit))

    def ensure_xid(self) -> int:
        """Called on the engine thread when a statement first writes."""
        if self.xid is None:
            self.xid = self.engine.begin_xid()
        return self.xid

    async def _commit(self) -> None:
        xid, self.xid = self.xid, None
        self._transition("end")
        self._transaction_ended()
        if xid is None:
            return
        commit_lsn = await self.engine.call_restartable(self.engine.write_commit, xid)
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
            except DatabaseError as error:  # fenced: a new writer's recovery decides this transaction
                log.warning("transaction %d: commit at LSN %d left to the next writer's recovery: %s",
                            xid, commit_lsn, error)
                return
            self.engine.transactions.finish(xid)
            return

    async def _rollback(self) -> None:
        xid, self.xid = self.xid, None
        self._transition("end")
        self._transaction_ended()
        if xid is not None:
            await self.engine.call_restartable(self.engine.write_abort, xid)

    async def close(self) -> None:
        if self.xid is not None:
            try:
                await self._rollback()
            except DatabaseError as error:
                log.warning("rollback at disconnect failed: %s", error)


class CopyInSink:
    """backend.CopyIn for one COPY ... FROM STDIN: cuts the client's bytes into lines and hands
    them to the engine thread in batches of up to COPY_BATCH_ROWS_MAX rows.

    Invariant: lines are numbered from 1 as the client sent them (a header line counts), so an
    error's CONTEXT names the line PostgreSQL would name; after an error nothing more is inserted."""

    def __init__(self, session: EngineSession, statement: Statement, target: copy_text.CopyTarget,
                 implicit: bool, autocommit: bool):
        self.session = session
        self.statement = statement
        self.spec = statement.copy
        self.target = target
        self.implicit = implicit
        self.autocommit = autocommit
        self.column_count = len(target.positions)
        self.binary = self.spec.binary
        self._binary_rows = copy_text.BinaryRows() if self.binary else None
        self._buffer = bytearray()
        self._lines: list[tuple[int, bytes]] = []
        self._line_number = 0
        self._ended = False  # the \. end-of-data line was seen: the rest is ignored
        self._failed = False
        self.count = 0

    async def write(self, data: bytes) -> None:
        if self._ended or self._failed:
            return
        self._buffer += data
        try:
            self._cut_lines(final=False)
        except DatabaseError as error:
            self._failed = True
            raise await self.session._statement_failed(error, self.implicit, self.statement.sql) from None
        if len(self._lines) >= copy_text.COPY_BATCH_ROWS_MAX or len(self._buffer) >= copy_text.COPY_BATCH_BYTES_MAX:
            await self._insert_batch()

    def _cut_lines(self, final: bool) -> None:
        if self._binary_rows is not None:
            self._lines += self._binary_rows.take(self._buffer)
            if final:
                self._binary_rows.finish(self._buffer)
            return
        buffer = self._buffer
        end = buffer.rfind(b"\n")
        complete = bytes(buffer[:end]) if end >= 0 else b""
        rest = bytes(buffer[end + 1:]) if end >= 0 else bytes(buffer)
        pieces = complete.split(b"\n") if end >= 0 else []
        if final and rest:
            pieces.append(rest)
            rest = b""
        self._buffer = bytearray(rest)
        for raw in pieces:
            if self._ended:
                break
            self._line_number += 1
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if raw == b"\\.":
                self._ended = True
                self._buffer.clear()
                break
            if self._line_number == 1 and self.spec.header:
                continue
            self._lines.append((self._line_number, raw))

    async def _insert_batch(self) -> None:
        lines, self._lines = self._lines, []
        if not lines:
            return
        session = self.session
        try:
            # On the engine thread at once: a batch outgrows the inline budget, and a call given
            # up there would have converted every row of it for nothing.
            self.count += await session.call_waiting(False, session.engine.copy_rows, self.target, self.spec, lines,
                                                     session)
        except Exception as error:
            self._failed = True
            raise await session._statement_failed(error, self.implicit, self.statement.sql) from None

    async def finish(self) -> Result:
        if not self._failed:
            try:
                self._cut_lines(final=True)
            except DatabaseError as error:
                self._failed = True
                raise await self.session._statement_failed(error, self.implicit, self.statement.sql) from None
            await self._insert_batch()
        if self.autocommit and self.session.state is BlockState.IDLE and self.session.xid is not None:
            await self.session._commit()
        return Result(f"COPY {self.count}")

    async def fail(self, error: Exception) -> Exception:
        if self._failed:
            return error
        self._failed = True
        return await self.session._statement_failed(error, self.implicit, self.statement.sql)
