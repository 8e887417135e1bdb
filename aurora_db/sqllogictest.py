"""`aurora-db sqllogictest`: run sqllogictest scripts against any PostgreSQL-protocol server.

Responsibilities: parse the sqllogictest format (ABOUT.wiki of the public-domain corpus: statement,
query, hash-threshold, halt, skipif/onlyif, '----', comments, multi-line SQL) into records; render
and judge results as the reference runner does (values by type letter, NULL, (empty), nosort,
rowsort, valuesort, MD5 hashing above the hash threshold, labels); then, below the I/O line, send
each record over psycopg 3 with the simple query protocol and count passes, failures and skips.
Invariants: everything above the I/O line is pure (text and values in, records and verdicts out);
a failing record never stops a file and a lost connection is reopened before the next record; a
file starts and ends without the tables and views it creates (they are dropped, views first).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from decimal import Decimal
from typing import Iterable, Iterator, Sequence

ENGINE_NAME = "postgresql"                  # the name skipif/onlyif lines are matched against
HASH_THRESHOLD_DEFAULT = 8                  # values; the reference runner's default (0: never hash)
FAILURES_SHOWN_DEFAULT = 10
STATEMENT_TIMEOUT_S_DEFAULT = 60.0
CANCEL_GRACE_S = 5.0                        # after a cancel request, how long before the socket is shut
CONNECT_TIMEOUT_S = 10
CONNECT_ATTEMPTS_MAX = 3                    # consecutive; then the server is declared unreachable
CONNECT_RETRY_INTERVAL_S = 1.0
VALUES_SHOWN_MAX = 20                       # per failure, in the text report
assert CANCEL_GRACE_S < STATEMENT_TIMEOUT_S_DEFAULT

EXIT_OK = 0
EXIT_FAILURE = 1

BOOL_OID = 16


class ScriptError(ValueError):
    """The script breaks the format: an unknown record, a query without SQL, a bad type string."""

    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line


class ServerUnreachable(ConnectionError):
    """CONNECT_ATTEMPTS_MAX connections in a row failed: the run cannot go on."""


# ----------------------------------------------------------------------------------------------
# Records (pure)
# ----------------------------------------------------------------------------------------------

class SortMode(enum.Enum):
    NOSORT = "nosort"
    ROWSORT = "rowsort"
    VALUESORT = "valuesort"


class ConditionKind(enum.Enum):
    SKIPIF = "skipif"
    ONLYIF = "onlyif"


@dataclasses.dataclass(frozen=True)
class Condition:
    kind: ConditionKind
    engine: str


@dataclasses.dataclass(frozen=True)
class HashedResult:
    """An expected result written as 'N values hashing to HASH'."""
    count: int
    md5: str


@dataclasses.dataclass(frozen=True)
class Statement:
    line: int
    sql: str
    expect_error: bool
    conditions: tuple[Condition, ...] = ()


@dataclasses.dataclass(frozen=True)
class Query:
    line: int
    sql: str
    types: str                                      # one of T, I, R per column
    sort_mode: SortMode
    label: str | None
    expected: tuple[str, ...] | HashedResult        # the lines after ----, or their hash
    conditions: tuple[Condition, ...] = ()


@dataclasses.dataclass(frozen=True)
class HashThreshold:
    line: int
    threshold: int
    conditions: tuple[Condition, ...] = ()


@dataclasses.dataclass(frozen=True)
class Halt:
    line: int
    conditions: tuple[Condition, ...] = ()


Record = Statement | Query | HashThreshold | Halt

TYPE_LETTERS = frozenset("TIR")
RESULT_SEPARATOR = "----"
HASHED_RESULT = re.compile(r"^(\d+) values hashing to ([0-9a-f]{32})$")


# ----------------------------------------------------------------------------------------------
# Parsing (pure)
# ----------------------------------------------------------------------------------------------

def _blocks(text: str) -> Iterator[list[tuple[int, str]]]:
    """Groups of (line number, line) separated by blank lines, comment lines removed first.

    A comment line is not blank: it neither ends a record nor appears in one."""
    block: list[tuple[int, str]] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if line.startswith("#"):
            continue
        if not line.strip():
            if block:
                yield block
                block = []
            continue
        block.append((number, line.rstrip()))
    if block:
        yield block


def _tokens(line: str) -> list[str]:
    """A control line's words, up to a trailing '# comment'."""
    words = []
    for word in line.split():
        if word.startswith("#"):
            break
        words.append(word)
    return words


def _parse_condition(path: str, number: int, words: list[str]) -> Condition:
    if len(words) != 2:
        raise ScriptError(path, number, f"expected '{words[0]} ENGINE', got {' '.join(words)!r}")
    return Condition(ConditionKind(words[0]), words[1])


def _parse_expected(lines: Sequence[str]) -> tuple[str, ...] | HashedResult:
    if len(lines) == 1:
        hashed = HASHED_RESULT.match(lines[0])
        if hashed:
            return HashedResult(int(hashed.group(1)), hashed.group(2))
    return tuple(lines)


def _parse_query(path: str, number: int, words: list[str], body: list[str],
                 conditions: tuple[Condition, ...]) -> Query:
    if len(words) < 2 or len(words) > 4:
        raise ScriptError(path, number, f"expected 'query TYPES [SORT-MODE] [LABEL]', got {' '.join(words)!r}")
    types = words[1]
    if not set(types) <= TYPE_LETTERS:
        raise ScriptError(path, number, f"type string {types!r} has letters other than T, I, R")
    try:
        sort_mode = SortMode(words[2]) if len(words) > 2 else SortMode.NOSORT
    except ValueError:
        raise ScriptError(path, number, f"unknown sort mode {words[2]!r}") from None
    label = words[3] if len(words) > 3 else None
    if RESULT_SEPARATOR in body:
        split = body.index(RESULT_SEPARATOR)
        sql_lines, expected = body[:split], _parse_expected(body[split + 1:])
    else:
        sql_lines, expected = body, ()
    if not sql_lines:
        raise ScriptError(path, number, "query without SQL")
    return Query(number, "\n".join(sql_lines), types, sort_mode, label, expected, conditions)


def _parse_block(path: str, block: list[tuple[int, str]]) -> Record:
    conditions = []
    index = 0
    while index < len(block) and _tokens(block[index][1])[:1] in (["skipif"], ["onlyif"]):
        number, line = block[index]
        conditions.append(_parse_condition(path, number, _tokens(line)))
        index += 1
    if index == len(block):
        raise ScriptError(path, block[-1][0], "conditions without a record")
    number, head = block[index]
    words = _tokens(head)
    body = [line for _, line in block[index + 1:]]
    conditions = tuple(conditions)
    if words[0] == "statement":
        if len(words) != 2 or words[1] not in ("ok", "error"):
            raise ScriptError(path, number, f"expected 'statement ok' or 'statement error', got {head!r}")
        if not body:
            raise ScriptError(path, number, "statement without SQL")
        return Statement(number, "\n".join(body), words[1] == "error", conditions)
    if words[0] == "query":
        return _parse_query(path, number, words, body, conditions)
    if words[0] == "hash-threshold":
        if len(words) != 2 or not words[1].isdigit() or body:
            raise ScriptError(path, number, f"expected 'hash-threshold N', got {head!r}")
        return HashThreshold(number, int(words[1]), conditions)
    if words[0] == "halt":
        if len(words) != 1 or body:
            raise ScriptError(path, number, f"expected 'halt' alone, got {head!r}")
        return Halt(number, conditions)
    raise ScriptError(path, number, f"unknown record {head!r}")


def parse_script(text: str, path: str = "<script>") -> list[Record]:
    """Every record of a script, in order. Raises ScriptError on the first malformed one."""
    return [_parse_block(path, block) for block in _blocks(text)]


def applies_to(conditions: Iterable[Condition], engine: str) -> bool:
    """False if a skipif names the engine or an onlyif names another one."""
    for condition in conditions:
        if condition.kind is ConditionKind.SKIPIF and condition.engine == engine:
            return False
        if condition.kind is ConditionKind.ONLYIF and condition.engine != engine:
            return False
    return True


# ----------------------------------------------------------------------------------------------
# Rendering results (pure)
# ----------------------------------------------------------------------------------------------

Value = str | int | float | Decimal | bool | None


def _printable(text: str) -> str:
    """Control and non-ASCII characters become '@', as the reference runner prints them."""
    return "".join(char if " " <= char <= "~" else "@" for char in text)


def _as_number(value: Value) -> int | float | Decimal | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, Decimal)):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        pass
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def format_value(value: Value, letter: str) -> str:
    """One value as the reference runner prints it for a column of type letter T, I or R.

    I is printf("%d") of the value truncated toward zero, R is printf("%.3f"), T is the text with
    unprintable characters as '@'. NULL is "NULL" and the empty string "(empty)" in every column.
    A boolean is 1 or 0 (what the reference's PostgreSQL ODBC driver returns). A value that is not
    a number in an I or R column is shown as text, so the mismatch is readable."""
    if value is None:
        return "NULL"
    if isinstance(value, str) and value == "":
        return "(empty)"
    if letter == "T":
        if isinstance(value, bool):
            return "1" if value else "0"
        return _printable(str(value))
    number = _as_number(value)
    if number is None:
        return _printable(str(value))
    try:
        if letter == "I":
            return "%d" % int(number)
        return "%.3f" % float(number)
    except (ValueError, OverflowError):               # NaN or infinity in an I column
        return _printable(str(value))


def format_rows(rows: Sequence[Sequence[Value]], types: str) -> list[list[str]]:
    """Each row's values formatted by the column's letter; extra columns (a mismatch) as T."""
    return [[format_value(value, types[i] if i < len(types) else "T") for i, value in enumerate(row)]
            for row in rows]


def sort_values(rows: list[list[str]], mode: SortMode) -> list[str]:
    """The values in result order: as received, by rows (strcmp per value), or each on its own."""
    if mode is SortMode.ROWSORT:
        rows = sorted(rows)
    values = [value for row in rows for value in row]
    if mode is SortMode.VALUESORT:
        values.sort()
    return values


def hash_values(values: Iterable[str]) -> str:
    """MD5 over every value followed by a newline, as the reference runner computes it."""
    digest = hashlib.md5()
    for value in values:
        digest.update(value.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def render_values(values: Sequence[str], threshold: int) -> list[str]:
    """The result lines: the values, or 'N values hashing to HASH' past a non-zero threshold."""
    if threshold > 0 and len(values) > threshold:
        return [f"{len(values)} values hashing to {hash_values(values)}"]
    return list(values)


def expected_lines(expected: tuple[str, ...] | HashedResult) -> list[str]:
    if isinstance(expected, HashedResult):
        return [f"{expected.count} values hashing to {expected.md5}"]
    return list(expected)


def expected_label_hash(expected: tuple[str, ...] | HashedResult) -> str:
    """What a query's expected result hashes to, for its label."""
    return expected.md5 if isinstance(expected, HashedResult) else hash_values(expected)


# ----------------------------------------------------------------------------------------------
# Judging one script (pure): what to run, and whether each outcome passes
# ----------------------------------------------------------------------------------------------

class Action(enum.Enum):
    RUN = "run"             # send the record's SQL
    SKIP = "skip"           # a condition excludes this engine
    CONTROL = "control"     # a hash-threshold: applied, nothing to send
    HALT = "halt"           # ignore the rest of the script


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the server did with one record's SQL."""
    error: str | None = None                        # the server's message, or why nothing came back
    column_count: int | None = None                 # None for a command without a result set
    rows: tuple[tuple[Value, ...], ...] = ()


@dataclasses.dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str = ""
    expected: tuple[str, ...] = ()
    got: tuple[str, ...] = ()


class ScriptJudge:
    """The state of one script's run, with no I/O: the hash threshold and the labels seen so far.

    Invariants: labels map to the hash of the first result seen under them (run or, for a skipped
    query, the result the script expects); the threshold starts at HASH_THRESHOLD_DEFAULT."""

    def __init__(self, engine: str = ENGINE_NAME):
        self.engine = engine
        self.threshold = HASH_THRESHOLD_DEFAULT
        self.labels: dict[str, str] = {}

    def action(self, record: Record) -> Action:
        if not applies_to(record.conditions, self.engine):
            return Action.SKIP
        if isinstance(record, Halt):
            return Action.HALT
        if isinstance(record, HashThreshold):
            self.threshold = record.threshold
            return Action.CONTROL
        return Action.RUN

    def judge_statement(self, statement: Statement, outcome: Outcome) -> Verdict:
        expected = ("error",) if statement.expect_error else ("ok",)
        got = (f"error: {outcome.error}",) if outcome.error is not None else ("ok",)
        if (outcome.error is not None) == statement.expect_error:
            return Verdict(True)
        reason = "statement failed" if outcome.error is not None else "statement succeeded, expected an error"
        return Verdict(False, reason, expected, got)

    def judge_query(self, query: Query, outcome: Outcome) -> Verdict:
        want = tuple(expected_lines(query.expected))
        if outcome.error is not None:
            return Verdict(False, "query failed", want, (f"error: {outcome.error}",))
        if outcome.column_count is not None and outcome.column_count != len(query.types):
            return Verdict(False, f"{outcome.column_count} columns, expected {len(query.types)}", want,
                           (f"{outcome.column_count} columns",))
        values = sort_values(format_rows(outcome.rows, query.types), query.sort_mode)
        got = tuple(render_values(values, self.threshold))
        if got != want:
            return Verdict(False, "wrong result", want, got)
        return self._check_label(query, hash_values(values), want, got)

    def note_skipped(self, record: Record) -> Verdict | None:
        """A skipped query with a label still checks the script's own result against the label."""
        if not isinstance(record, Query) or record.label is None:
            return None
        lines = tuple(expected_lines(record.expected))
        verdict = self._check_label(record, expected_label_hash(record.expected), lines, lines)
        return None if verdict.passed else verdict

    def _check_label(self, query: Query, digest: str, want: tuple[str, ...], got: tuple[str, ...]) -> Verdict:
        if query.label is None:
            return Verdict(True)
        seen = self.labels.setdefault(query.label, digest)
        if seen != digest:
            return Verdict(False, f"result differs from an earlier query labelled {query.label}", want,
                           got + (f"(hash {digest}, label's hash {seen})",))
        return Verdict(True)


CREATED_RELATION = re.compile(
    r"^\s*CREATE\s+(?:(?:TEMP|TEMPORARY)\s+)?(TABLE|VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(\"[^\"]+\"|[A-Za-z_][A-Za-z0-9_$]*)", re.IGNORECASE)


def created_relation(sql: str) -> tuple[str, str] | None:
    """("TABLE" or "VIEW", name as written) if the statement creates one, else None."""
    found = CREATED_RELATION.match(sql)
    return (found.group(1).upper(), found.group(2)) if found else None


def relations_created_by(records: Iterable[Record], engine: str) -> list[tuple[str, str]]:
    """The tables and views the statements that apply to the engine would create, in order."""
    found = []
    for record in records:
        if isinstance(record, Statement) and applies_to(record.conditions, engine):
            relation = created_relation(record.sql)
            if relation is not None:
                found.append(relation)
    return found


def drop_statements(created: Sequence[tuple[str, str]]) -> list[str]:
    """DROP ... IF EXISTS for each created relation: views first (they depend on tables), newest
    first within each kind, each name once."""
    statements: list[str] = []
    for kind in ("VIEW", "TABLE"):
        for created_kind, name in reversed(created):
            statement = f"DROP {kind} IF EXISTS {name}"
            if created_kind == kind and statement not in statements:
                statements.append(statement)
    return statements


def limit_records(records: Sequence[Record], limit: int | None) -> list[Record]:
    """The records up to and including the limit-th statement or query (None: all of them)."""
    if limit is None:
        return list(records)
    kept, counted = [], 0
    for record in records:
        if counted == limit:
            break
        kept.append(record)
        counted += isinstance(record, (Statement, Query))
    return kept


# ----------------------------------------------------------------------------------------------
# Reports (pure)
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Failure:
    path: str
    line: int
    sql: str
    reason: str
    expected: tuple[str, ...]
    got: tuple[str, ...]


@dataclasses.dataclass
class FileReport:
    path: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    halted_line: int | None = None
    error: str | None = None                        # why the file could not run to its end


@dataclasses.dataclass
class RunReport:
    files: list[FileReport] = dataclasses.field(default_factory=list)
    failures: list[Failure] = dataclasses.field(default_factory=list)   # the first ones only

    def total(self) -> FileReport:
        total = FileReport("total")
        for report in self.files:
            total.passed += report.passed
            total.failed += report.failed
            total.skipped += report.skipped
            total.seconds += report.seconds
        return total

    def ok(self) -> bool:
        return all(report.failed == 0 and report.error is None for report in self.files)


def _counts(report: FileReport) -> str:
    text = f"{report.passed} passed, {report.failed} failed, {report.skipped} skipped ({report.seconds:.1f} s)"
    if report.halted_line is not None:
        text += f", halted at line {report.halted_line}"
    if report.error is not None:
        text += f", stopped: {report.error}"
    return text


def _shown(lines: Sequence[str]) -> str:
    if len(lines) > VALUES_SHOWN_MAX:
        lines = [*lines[:VALUES_SHOWN_MAX], f"... ({len(lines) - VALUES_SHOWN_MAX} more)"]
    return "\n".join("      " + line for line in lines) if lines else "      (no rows)"


def format_failures(failures: Sequence[Failure]) -> str:
    out = []
    for failure in failures:
        sql = "\n".join("      " + line for line in failure.sql.splitlines())
        out += ["", f"FAIL {failure.path}:{failure.line}: {failure.reason}", "  sql:", sql,
                "  expected:", _shown(failure.expected), "  got:", _shown(failure.got)]
    return "".join(line + "\n" for line in out)


def format_report(report: RunReport) -> str:
    """Per-file counts, the total, then the first failures."""
    lines = [f"{file.path}: {_counts(file)}" for file in report.files]
    lines.append(f"total: {_counts(report.total())}")
    return "".join(line + "\n" for line in lines) + format_failures(report.failures)


def report_json(report: RunReport) -> str:
    return json.dumps({
        "files": [dataclasses.asdict(file) for file in report.files],
        "total": dataclasses.asdict(report.total()),
        "failures": [dataclasses.asdict(failure) for failure in report.failures],
    }, indent=2)


# ----------------------------------------------------------------------------------------------
# I/O: a psycopg 3 connection that reconnects, and a watchdog for statements that never return
# ----------------------------------------------------------------------------------------------

class _Watchdog:
    """Cancels a statement after timeout_s; if it still runs CANCEL_GRACE_S later (the server
    ignores cancel requests), shuts the socket down so the client's wait ends with a lost connection."""

    def __init__(self, connection, timeout_s: float):
        self.connection = connection
        self.lock = threading.Lock()
        self.done = False
        self.fired = False
        self.timers = [threading.Timer(timeout_s, self._cancel),
                       threading.Timer(timeout_s + CANCEL_GRACE_S, self._shut_socket)]
        for timer in self.timers:
            timer.daemon = True

    def __enter__(self) -> "_Watchdog":
        for timer in self.timers:
            timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        with self.lock:
            self.done = True
        for timer in self.timers:
            timer.cancel()

    def _cancel(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
            try:
                self.connection.cancel_safe(timeout=CANCEL_GRACE_S / 2)
            except Exception:                          # best effort: the socket shutdown follows
                pass

    def _shut_socket(self) -> None:
        with self.lock:
            if self.done:
                return
            try:
                with socket.socket(fileno=os.dup(self.connection.pgconn.socket)) as duplicate:
                    duplicate.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Client:
    """One autocommit connection; each SQL text is sent as is with the simple query protocol.

    Values come back as the server's text (booleans as bool), so formatting sees what was sent."""

    def __init__(self, conninfo: dict, statement_timeout_s: float = STATEMENT_TIMEOUT_S_DEFAULT):
        self.conninfo = conninfo
        self.statement_timeout_s = statement_timeout_s
        self.connection = None
        self.reconnects = 0

    def _connect(self):
        import psycopg
        from psycopg.types.string import TextLoader

        if self.connection is not None and not self.connection.closed:
            return self.connection
        last_error = None
        for _ in range(CONNECT_ATTEMPTS_MAX):
            try:
                connection = psycopg.connect(**self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                             prepare_threshold=None)
                break
            except psycopg.OperationalError as error:
                last_error = error
                time.sleep(CONNECT_RETRY_INTERVAL_S)
        else:
            raise ServerUnreachable(f"cannot connect: {_first_line(last_error)}")
        for info in psycopg.postgres.types:
            if info.oid != BOOL_OID:
                connection.adapters.register_loader(info.oid, TextLoader)
            if info.array_oid:
                connection.adapters.register_loader(info.array_oid, TextLoader)
        connection.add_notice_handler(lambda notice: None)
        if self.connection is not None:
            self.reconnects += 1
        self.connection = connection
        return connection

    def execute(self, sql: str) -> Outcome:
        import psycopg

        connection = self._connect()
        watchdog = _Watchdog(connection, self.statement_timeout_s)
        try:
            with watchdog:
                cursor = connection.execute(sql, prepare=False)
                if cursor.description is None:
                    return Outcome()
                return Outcome(None, len(cursor.description), tuple(tuple(row) for row in cursor.fetchall()))
        except psycopg.Error as error:
            message = _first_line(error)
            if watchdog.fired:
                message = f"timed out after {self.statement_timeout_s:g} s ({message})"
            if connection.closed or connection.broken:
                connection.close()
                message = f"connection lost: {message}"
            return Outcome(message)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ----------------------------------------------------------------------------------------------
# I/O: running files
# ----------------------------------------------------------------------------------------------

def _drop_all(client: Client, statements: Iterable[str]) -> None:
    for statement in statements:
        client.execute(statement)                     # an error (e.g. "is not a view") is harmless here


def run_script(path: str, records: Sequence[Record], client: Client, report: RunReport,
               failures_max: int, engine: str = ENGINE_NAME) -> FileReport:
    """Run one parsed script; appends its FileReport and its first failures to report."""
    file = FileReport(path)
    report.files.append(file)
    judge = ScriptJudge(engine)
    started = time.monotonic()
    created: list[tuple[str, str]] = []              # by the statements that succeeded, in order

    def fail(record: Statement | Query, verdict: Verdict) -> None:
        file.failed += 1
        if len(report.failures) < failures_max:
            report.failures.append(Failure(path, record.line, record.sql, verdict.reason, verdict.expected,
                                           verdict.got))

    try:
        _drop_all(client, drop_statements(relations_created_by(records, engine)))   # left by an earlier run
        for record in records:
            action = judge.action(record)
            if action is Action.HALT:
                file.halted_line = record.line
                break
            if action is Action.CONTROL:
                continue
            if action is Action.SKIP:
                verdict = judge.note_skipped(record)
                if verdict is not None:
                    fail(record, verdict)
                elif isinstance(record, (Statement, Query)):
                    file.skipped += 1
                continue
            outcome = client.execute(record.sql)
            if isinstance(record, Statement):
                verdict = judge.judge_statement(record, outcome)
                relation = created_relation(record.sql)
                if relation is not None and outcome.error is None:
                    created.append(relation)
            else:
                verdict = judge.judge_query(record, outcome)
            if verdict.passed:
                file.passed += 1
            else:
                fail(record, verdict)
        _drop_all(client, drop_statements(created))
    except ServerUnreachable as error:
        file.error = str(error)
    file.seconds = time.monotonic() - started
    return file


def run_files(paths: Sequence[str], conninfo: dict, *, failures_max: int = FAILURES_SHOWN_DEFAULT,
              record_limit: int | None = None, engine: str = ENGINE_NAME,
              statement_timeout_s: float = STATEMENT_TIMEOUT_S_DEFAULT, progress=None) -> RunReport:
    """Run each file in turn on one client. Raises ScriptError (before anything runs) on a bad
    script and OSError on an unreadable one. progress(FileReport) is called after each file."""
    scripts = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            scripts.append((path, limit_records(parse_script(handle.read(), path), record_limit)))
    report = RunReport()
    client = Client(conninfo, statement_timeout_s)
    try:
        for path, records in scripts:
            file = run_script(path, records, client, report, failures_max, engine)
            if progress is not None:
                progress(file)
            if file.error is not None:
                break
    finally:
        client.close()
    return report


def run(args) -> int:
    """The CLI entry: print per-file and total counts and the first failures; 0 only if none failed."""
    from aurora_db.shell import resolve_settings

    try:
        settings = resolve_settings(None, args.host, args.port, args.user, args.dbname, dict(os.environ))
        failures_max = FAILURES_SHOWN_DEFAULT if args.failures is None else args.failures
        timeout_s = STATEMENT_TIMEOUT_S_DEFAULT if args.timeout is None else args.timeout
        report = run_files(args.files, settings.conninfo(), failures_max=failures_max,
                           record_limit=args.limit_records, statement_timeout_s=timeout_s,
                           progress=None if args.json else _print_progress)
    except (ScriptError, OSError, ValueError) as error:
        sys.stderr.write(f"aurora-db sqllogictest: {error}\n")
        return EXIT_FAILURE
    if args.json:
        sys.stdout.write(report_json(report) + "\n")
    else:                                             # the per-file lines were printed as each file ended
        sys.stdout.write(f"total: {_counts(report.total())}\n" + format_failures(report.failures))
    return EXIT_OK if report.ok() else EXIT_FAILURE


def _print_progress(file: FileReport) -> None:
    sys.stdout.write(f"{file.path}: {_counts(file)}\n")
    sys.stdout.flush()
