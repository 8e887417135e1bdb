"""`aurora-db sql`: the bundled SQL shell, a small psql over psycopg 3 and prompt_toolkit.

Responsibilities: connect (URL, flags, PG* environment, defaults), read statements from a prompt,
-c, -f or piped stdin, send them one at a time on an autocommit connection (so the user's own
BEGIN/COMMIT reach the server untouched), and print results the way psql does.
Invariants: the parsing and formatting below the I/O line are pure functions (text in, text out);
a statement is sent only once a ';' outside quotes and comments ends it (or the input ends), with
its comments removed; a script stops at the first failure and exits 1; an interactive session
survives errors and a lost connection (it reconnects before the next statement).
\\dt and \\d use only single-table queries on information_schema (the server does no joins) and
combine the answers here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import sys
import time
import urllib.parse
from typing import Callable, TextIO

import wcwidth

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5432
DEFAULT_USER = "postgres"
DEFAULT_DBNAME = "postgres"
HISTORY_FILE_DEFAULT = "~/.aurora_db_history"
HISTORY_FILE_ENV = "AURORA_DB_HISTFILE"
CONNECT_TIMEOUT_S = 10

EXIT_OK = 0
EXIT_FAILURE = 1

# PostgreSQL type OIDs psql right-aligns: int2, int4, int8, oid, xid, cid, float4, float8, money,
# numeric, xid8.
NUMERIC_TYPE_OIDS = frozenset({21, 23, 20, 26, 28, 29, 700, 701, 790, 1700, 5069})

HELP_TEXT = """\
General
  \\q                 quit
  \\?                 show this help
  \\timing [on|off]   toggle (or set) printing how long each statement took

Informational
  \\dt [PATTERN]      list tables (PATTERN may use * and ?)
  \\d [TABLE]         describe a table's columns and primary key; without TABLE, as \\dt

Statements end with ';' and may span lines. BEGIN/COMMIT/ROLLBACK are sent as typed.
"""


# ----------------------------------------------------------------------------------------------
# Statement splitting (pure)
# ----------------------------------------------------------------------------------------------

STATE_NORMAL = "-"
STATE_SINGLE_QUOTE = "'"
STATE_DOUBLE_QUOTE = '"'
STATE_DOLLAR_QUOTE = "$"
STATE_BLOCK_COMMENT = "*"
STATE_PARENTHESIS = "("

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def _is_identifier_char(char: str) -> bool:
    return char.isalnum() or char == "_"


@dataclasses.dataclass(frozen=True)
class Scan:
    """What one pass over some input found.

    statements: complete statements, comments removed, trimmed, without their ';', blank ones dropped.
    remainder: the raw text after the last ';' (the unfinished statement, to be scanned again with
    more input). state: where the remainder ends (one of the STATE_* markers, psql's prompt
    characters). remainder_has_sql: the remainder holds something other than whitespace and comments.
    """

    statements: list[str]
    remainder: str
    state: str
    remainder_has_sql: bool

    @property
    def remainder_is_blank(self) -> bool:
        return not self.remainder_has_sql and self.state in (STATE_NORMAL, STATE_PARENTHESIS)


def scan_statements(text: str) -> Scan:
    """Split `text` at every ';' that is outside quotes, dollar quotes and comments."""
    statements: list[str] = []
    current: list[str] = []  # the statement being built, comments already removed
    has_sql = False
    statement_start = 0
    paren_depth = 0
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        pair = text[index:index + 2]
        if pair == "--":
            newline = text.find("\n", index)
            if newline < 0:
                return Scan(statements, text[statement_start:], STATE_NORMAL, has_sql)
            index = newline
            continue
        if pair == "/*":
            end = _block_comment_end(text, index)
            if end < 0:
                return Scan(statements, text[statement_start:], STATE_BLOCK_COMMENT, has_sql)
            current.append(" ")
            index = end
            continue
        if char in "'\"":
            escapes = char == "'" and _starts_escape_string(text, index)
            end = _quoted_end(text, index, char, escapes)
            if end < 0:
                state = STATE_SINGLE_QUOTE if char == "'" else STATE_DOUBLE_QUOTE
                return Scan(statements, text[statement_start:], state, True)
            current.append(text[index:end])
            has_sql = True
            index = end
            continue
        if char == "$" and (index == 0 or not _is_identifier_char(text[index - 1])):
            tag = _DOLLAR_TAG.match(text, index)
            if tag:
                close = text.find(tag.group(0), tag.end())
                if close < 0:
                    return Scan(statements, text[statement_start:], STATE_DOLLAR_QUOTE, True)
                end = close + len(tag.group(0))
                current.append(text[index:end])
                has_sql = True
                index = end
                continue
        if char == ";":
            statement = "".join(current).strip()
            if statement:
                statements.append(statement)
            current, has_sql, paren_depth = [], False, 0
            statement_start = index + 1
            index += 1
            continue
        if char == "(":
            paren_depth += 1
        elif char == ")":
            paren_depth = max(0, paren_depth - 1)
        if not char.isspace():
            has_sql = True
        current.append(char)
        index += 1
    state = STATE_PARENTHESIS if paren_depth > 0 else STATE_NORMAL
    return Scan(statements, text[statement_start:], state, has_sql)


def _block_comment_end(text: str, start: int) -> int:
    """Index just past the comment opened at `start` (they nest, as in PostgreSQL), or -1."""
    depth = 0
    index = start
    while index < len(text):
        pair = text[index:index + 2]
        if pair == "/*":
            depth += 1
            index += 2
        elif pair == "*/":
            depth -= 1
            index += 2
            if depth == 0:
                return index
        else:
            index += 1
    return -1


def _starts_escape_string(text: str, quote_index: int) -> bool:
    """True for E'...': the quote follows an E that is not the end of a longer identifier."""
    if quote_index == 0 or text[quote_index - 1] not in "eE":
        return False
    return quote_index == 1 or not _is_identifier_char(text[quote_index - 2])


def _quoted_end(text: str, start: int, quote: str, backslash_escapes: bool) -> int:
    """Index just past the quote that closes the one at `start`, or -1. A doubled quote is a
    quote character inside the string; it is read as closing then reopening, which is the same."""
    index = start + 1
    while index < len(text):
        char = text[index]
        if backslash_escapes and char == "\\":
            index += 2
            continue
        if char == quote:
            return index + 1
        index += 1
    return -1


def split_statements(text: str) -> list[str]:
    """Every statement in a whole script, the unterminated last one included (psql sends it at EOF)."""
    scan = scan_statements(text)
    rest = scan_statements(scan.remainder + ";").statements if scan.remainder_has_sql else []
    return scan.statements + rest


def input_is_complete(text: str) -> bool:
    """Whether pressing Enter after `text` should run it: it is blank, a backslash command, or its
    statements are all ended by ';'."""
    if text.lstrip().startswith("\\"):
        return True
    return scan_statements(text).remainder_is_blank


def is_meta_command(line: str) -> bool:
    return line.lstrip().startswith("\\")


# ----------------------------------------------------------------------------------------------
# Connection settings (pure)
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ConnectionSettings:
    host: str
    port: int
    user: str
    dbname: str
    password: str | None = None

    def conninfo(self) -> dict:
        settings = {"host": self.host, "port": self.port, "user": self.user, "dbname": self.dbname}
        if self.password is not None:
            settings["password"] = self.password
        return settings

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


def parse_url(url: str) -> dict:
    """The fields a postgresql:// (or postgres://) URL names; absent ones are left out."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"expected a postgresql:// URL, got {url!r}")
    fields = {
        "host": parts.hostname,
        "port": parts.port,
        "user": urllib.parse.unquote(parts.username) if parts.username else None,
        "password": urllib.parse.unquote(parts.password) if parts.password else None,
        "dbname": urllib.parse.unquote(parts.path.lstrip("/")) or None,
    }
    return {name: value for name, value in fields.items() if value is not None}


def resolve_settings(url: str | None, host: str | None, port: int | None, user: str | None,
                     dbname: str | None, environ: dict) -> ConnectionSettings:
    """Flags win over the URL, the URL over PGHOST/PGPORT/PGUSER/PGDATABASE, those over defaults."""
    from_url = parse_url(url) if url else {}
    flags = {"host": host, "port": port, "user": user, "dbname": dbname}
    from_env = {"host": environ.get("PGHOST"), "port": environ.get("PGPORT"), "user": environ.get("PGUSER"),
                "dbname": environ.get("PGDATABASE")}
    defaults = {"host": DEFAULT_HOST, "port": DEFAULT_PORT, "user": DEFAULT_USER, "dbname": DEFAULT_DBNAME}
    chosen = {}
    for name in defaults:
        candidates = (flags[name], from_url.get(name), from_env[name] or None, defaults[name])
        chosen[name] = next(value for value in candidates if value is not None)
    return ConnectionSettings(chosen["host"], int(chosen["port"]), chosen["user"], chosen["dbname"],
                              from_url.get("password"))


# ----------------------------------------------------------------------------------------------
# Result formatting (pure): psql's "aligned" format with border 1
# ----------------------------------------------------------------------------------------------

def display_width(text: str) -> int:
    width = wcwidth.wcswidth(text)
    return len(text) if width < 0 else width


def _pad_right(text: str, width: int) -> str:
    return text + " " * (width - display_width(text))


def _pad_left(text: str, width: int) -> str:
    return " " * (width - display_width(text)) + text


def _centre(text: str, width: int) -> str:
    spare = width - display_width(text)
    return " " * (spare // 2) + text + " " * (spare - spare // 2)


def format_table(headers: list[str], rows: list[list[str | None]], right_aligned: list[bool] | None = None,
                 title: str | None = None) -> str:
    """psql's aligned table: centred headers, a rule, then rows; NULL prints as nothing.

    Numbers (right_aligned[i]) are padded on the left. A value with newlines takes several lines;
    each line that continues ends with '+'. The last column is not padded on the right unless it
    continues. Returns the lines, each ending in a newline, without the row-count footer.
    Matches psql 15 byte for byte (tests/test_shell.py compares the two)."""
    right_aligned = right_aligned or [False] * len(headers)
    cells = [[("" if value is None else value).split("\n") for value in row] for row in rows]
    widths = [display_width(header) for header in headers]
    for row in cells:
        for column, lines in enumerate(row):
            widths[column] = max([widths[column]] + [display_width(line) for line in lines])
    if not headers:
        return "--\n"  # psql's rendering of rows without columns: a bare rule, no lines per row
    lines = []
    header_line = " " + " | ".join(_centre(header, width) for header, width in zip(headers, widths)) + " "
    if title is not None:
        spare = max(0, len(header_line) - display_width(title))
        lines.append(" " * (spare // 2) + title)
    lines.append(header_line)
    lines.append("+".join("-" * (width + 2) for width in widths))
    for row in cells:
        lines += _format_row(row, widths, right_aligned)
    return "".join(line + "\n" for line in lines)


def _format_row(row: list[list[str]], widths: list[int], right_aligned: list[bool]) -> list[str]:
    height = max((len(lines) for lines in row), default=1)
    output = []
    for line_number in range(height):
        parts = []
        last = len(row) - 1
        for column, lines in enumerate(row):
            text = lines[line_number] if line_number < len(lines) else ""
            continues = line_number < len(lines) - 1
            if column == last and line_number >= len(lines):
                pass  # psql leaves a finished last cell's further lines empty, even for numbers
            elif right_aligned[column]:
                text = _pad_left(text, widths[column])
            elif column < last or continues:
                text = _pad_right(text, widths[column])
            marker = "+" if continues else (" " if column < last else "")
            parts.append(text + marker)
        output.append(" " + "|".join(part if index == 0 else " " + part for index, part in enumerate(parts)))
    return output


def row_count_footer(count: int) -> str:
    return "(1 row)\n" if count == 1 else f"({count} rows)\n"


def format_result(headers: list[str], rows: list[list[str | None]], right_aligned: list[bool]) -> str:
    """A query's output as psql prints it: the table, the row count, a blank line."""
    return format_table(headers, rows, right_aligned) + row_count_footer(len(rows)) + "\n"


def format_error(message: str, sqlstate: str | None, detail: str | None = None, hint: str | None = None) -> str:
    text = f"ERROR:  {message}" + (f" (SQLSTATE {sqlstate})" if sqlstate else "") + "\n"
    if detail:
        text += f"DETAIL:  {detail}\n"
    if hint:
        text += f"HINT:  {hint}\n"
    return text


def format_duration(seconds: float) -> str:
    return f"Time: {seconds * 1000:.3f} ms\n"


# ----------------------------------------------------------------------------------------------
# \dt and \d (pure: the queries to send, and how to print their answers)
# ----------------------------------------------------------------------------------------------

def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def parse_relation_name(text: str) -> str:
    """psql's rule: unquoted names fold to lower case, "quoted" ones keep theirs; a schema prefix is
    dropped (information_schema.columns is queried by table name only)."""
    text = text.strip()
    parts, current, quoted, index = [], "", False, 0
    while index < len(text):
        char = text[index]
        if char == '"':
            if quoted and text[index + 1:index + 2] == '"':
                current += '"'
                index += 1
            else:
                quoted = not quoted
        elif char == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char if quoted else char.lower()
        index += 1
    parts.append(current)
    return parts[-1]


def tables_query() -> str:
    return ("SELECT table_schema, table_name, table_type FROM information_schema.tables "
            "WHERE table_schema = 'public' ORDER BY table_name")


def columns_query(table: str) -> str:
    return ("SELECT column_name, data_type, character_maximum_length, is_nullable, column_default, "
            f"ordinal_position FROM information_schema.columns WHERE table_name = {sql_literal(table)} "
            "ORDER BY ordinal_position")


def constraints_query(table: str) -> str:
    return ("SELECT constraint_name, constraint_type FROM information_schema.table_constraints "
            f"WHERE table_name = {sql_literal(table)} ORDER BY constraint_name")


def key_columns_query(table: str) -> str:
    return ("SELECT constraint_name, column_name, ordinal_position FROM information_schema.key_column_usage "
            f"WHERE table_name = {sql_literal(table)} ORDER BY ordinal_position")


TABLE_TYPE_NAMES = {"BASE TABLE": "table", "VIEW": "view"}


def format_table_list(rows: list[tuple], pattern: str | None = None) -> str | None:
    """\\dt: rows of (schema, name, type) from information_schema.tables; None if nothing matches."""
    listed = [[schema, name, TABLE_TYPE_NAMES.get(kind, str(kind).lower())]
              for schema, name, kind in rows
              if kind == "BASE TABLE" and (pattern is None or fnmatch.fnmatchcase(name, pattern))]
    if not listed:
        return None
    return (format_table(["Schema", "Name", "Type"], listed, title="List of relations")
            + row_count_footer(len(listed)) + "\n")


def column_type_name(data_type: str, character_maximum_length) -> str:
    if character_maximum_length is None:
        return str(data_type)
    return f"{data_type}({character_maximum_length})"


def format_table_description(table: str, columns: list[tuple], constraints: list[tuple],
                             key_columns: list[tuple]) -> str:
    """\\d TABLE from three single-table answers.

    columns: (column_name, data_type, character_maximum_length, is_nullable, column_default,
    ordinal_position); constraints: (constraint_name, constraint_type); key_columns:
    (constraint_name, column_name, ordinal_position)."""
    body = [[name, column_type_name(data_type, length), "not null" if nullable == "NO" else "", default]
            for name, data_type, length, nullable, default, _ in sorted(columns, key=lambda column: int(column[5]))]
    text = format_table(["Column", "Type", "Nullable", "Default"], body, title=f'Table "{table}"')
    key_lines = []
    for constraint_name, constraint_type in constraints:
        if constraint_type not in ("PRIMARY KEY", "UNIQUE"):
            continue
        names = [column for name, column, _ in sorted(key_columns, key=lambda key: int(key[2]))
                 if name == constraint_name]
        key_lines.append(f'    "{constraint_name}" {constraint_type} ({", ".join(names)})\n')
    key_lines.sort(key=lambda line: "PRIMARY KEY" not in line)  # the primary key first, as psql does
    if key_lines:
        text += "Indexes:\n" + "".join(key_lines)
    return text + "\n"


# ----------------------------------------------------------------------------------------------
# The shell (I/O)
# ----------------------------------------------------------------------------------------------

class StatementFailed(Exception):
    """A statement or meta-command failed; the message was already printed."""


class QuitRequested(Exception):
    """\\q: leave the shell."""


class Shell:
    """One session: a lazily (re)opened connection, the \\timing switch, and where output goes."""

    def __init__(self, settings: ConnectionSettings, out: TextIO = sys.stdout, err: TextIO = sys.stderr):
        self.settings = settings
        self.out = out
        self.err = err
        self.timing = False
        self.connection = None
        self._connection_lost = False

    # -- connection ------------------------------------------------------------------------------

    def connect(self):
        """Open the connection if there is none; raises StatementFailed (printed) if the server is not there."""
        import psycopg

        if self.connection is not None and not self.connection.closed:
            return self.connection
        try:
            connection = psycopg.connect(**self.settings.conninfo(), autocommit=True,
                                         connect_timeout=CONNECT_TIMEOUT_S, prepare_threshold=None)
        except psycopg.Error as error:
            self._print_error(f"could not connect to server at {self.settings.host}:{self.settings.port}: "
                              f"{_first_line(error)}")
            raise StatementFailed from None
        _load_every_type_as_text(connection)
        connection.add_notice_handler(self._print_notice)
        if self._connection_lost:
            self.out.write(f"Reconnected to {self.settings.describe()}.\n")
            self._connection_lost = False
        self.connection = connection
        return connection

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def _drop_lost_connection(self) -> None:
        self._print_error("the connection to the server was lost; the next statement will reconnect "
                          "(an open transaction was rolled back)")
        try:
            self.connection.close()
        finally:
            self.connection = None
            self._connection_lost = True

    # -- statements ------------------------------------------------------------------------------

    def run_statement(self, sql: str) -> None:
        """Send one statement and print its result; raises StatementFailed after printing why."""
        import psycopg

        connection = self.connect()
        started = time.perf_counter()
        try:
            cursor = connection.execute(sql)
            rows = cursor.fetchall() if cursor.description is not None else None
        except psycopg.Error as error:
            self._report_database_error(error)
            raise StatementFailed from None
        elapsed = time.perf_counter() - started
        if rows is not None:
            headers = [column.name for column in cursor.description]
            right_aligned = [column.type_code in NUMERIC_TYPE_OIDS for column in cursor.description]
            self.out.write(format_result(headers, [list(row) for row in rows], right_aligned))
        elif cursor.statusmessage:
            self.out.write(cursor.statusmessage + "\n")
        if self.timing:
            self.out.write(format_duration(elapsed))
        self.out.flush()

    def query(self, sql: str) -> list[tuple]:
        """A query the shell itself needs (\\dt, \\d)."""
        import psycopg

        connection = self.connect()
        try:
            return connection.execute(sql).fetchall()
        except psycopg.Error as error:
            self._report_database_error(error)
            raise StatementFailed from None

    def _report_database_error(self, error) -> None:
        diagnostic = error.diag
        if error.sqlstate:
            self._print_error(diagnostic.message_primary or _first_line(error), error.sqlstate,
                              diagnostic.message_detail, diagnostic.message_hint)
        else:
            self._print_error(_first_line(error))
        if self.connection is not None and (self.connection.broken or self.connection.closed):
            self._drop_lost_connection()

    def _print_error(self, message: str, sqlstate: str | None = None, detail: str | None = None,
                     hint: str | None = None) -> None:
        self.out.flush()
        self.err.write(format_error(message, sqlstate, detail, hint))
        self.err.flush()

    def _print_notice(self, diagnostic) -> None:
        self.err.write(f"{diagnostic.severity or 'NOTICE'}:  {diagnostic.message_primary}\n")

    # -- meta-commands ---------------------------------------------------------------------------

    def run_meta_command(self, line: str) -> None:
        command, _, argument = line.strip().partition(" ")
        argument = argument.strip()
        handler = self._META_COMMANDS.get(command)
        if handler is None:
            self._print_error(f"invalid command {command}; try \\? for help")
            raise StatementFailed
        handler(self, argument)
        self.out.flush()

    def _quit(self, argument: str) -> None:
        raise QuitRequested

    def _help(self, argument: str) -> None:
        self.out.write(HELP_TEXT)

    def _toggle_timing(self, argument: str) -> None:
        if argument.lower() not in ("", "on", "off"):
            self._print_error(f"\\timing: expected on or off, got {argument!r}")
            raise StatementFailed
        self.timing = (argument.lower() == "on") if argument else not self.timing
        self.out.write(f"Timing is {'on' if self.timing else 'off'}.\n")

    def _list_tables(self, argument: str) -> None:
        pattern = parse_relation_name(argument) if argument else None
        text = format_table_list(self.query(tables_query()), pattern)
        if text is None:
            self.err.write("Did not find any relations.\n" if pattern is None
                           else f'Did not find any relation named "{argument}".\n')
            return
        self.out.write(text)

    def _describe(self, argument: str) -> None:
        if not argument:
            self._list_tables("")
            return
        table = parse_relation_name(argument)
        columns = self.query(columns_query(table))
        if not columns:
            self._print_error(f'Did not find any relation named "{argument}".')
            raise StatementFailed
        constraints = self.query(constraints_query(table))
        key_columns = self.query(key_columns_query(table))
        self.out.write(format_table_description(table, columns, constraints, key_columns))

    _META_COMMANDS: dict[str, Callable[[Shell, str], None]] = {
        "\\q": _quit, "\\quit": _quit, "\\?": _help, "\\timing": _toggle_timing,
        "\\dt": _list_tables, "\\d": _describe,
    }

    # -- input -----------------------------------------------------------------------------------

    def run_text(self, text: str) -> None:
        """Run everything in `text` (a script, a -c string, or one accepted prompt input) in order.

        A line that starts with a backslash while no statement is pending is a meta-command; an
        unterminated last statement runs at the end. Raises StatementFailed at the first failure."""
        if not any(is_meta_command(line) for line in text.splitlines()):
            for statement in split_statements(text):  # one pass, however long the statements
                self.run_statement(statement)
            return
        pending = ""
        for line in text.splitlines(keepends=True):
            if is_meta_command(line) and scan_statements(pending).remainder_is_blank:
                pending = ""
                self.run_meta_command(line)
                continue
            scan = scan_statements(pending + line)
            pending = scan.remainder
            for statement in scan.statements:
                self.run_statement(statement)
        for statement in split_statements(pending):
            self.run_statement(statement)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_every_type_as_text(connection) -> None:
    """Show values exactly as the server wrote them (psql does): every known type loads as str;
    unknown types already do."""
    import psycopg
    from psycopg.types.string import TextLoader

    for info in psycopg.postgres.types:
        connection.adapters.register_loader(info.oid, TextLoader)
        if info.array_oid:
            connection.adapters.register_loader(info.array_oid, TextLoader)


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------

def run(args) -> int:
    try:
        settings = resolve_settings(args.url, args.host, args.port, args.user, args.dbname, dict(os.environ))
        if getattr(args, "reader", False):  # a local cluster's reader endpoint is the writer endpoint's P+1
            settings = dataclasses.replace(settings, port=settings.port + 1)
    except ValueError as error:
        sys.stderr.write(f"aurora-db sql: {error}\n")
        return EXIT_FAILURE
    shell = Shell(settings)
    try:
        if args.sql_command or args.file:
            return run_scripts(shell, args.sql_command or [], args.file)
        if not sys.stdin.isatty():
            return run_script_text(shell, sys.stdin.read())
        return run_interactive(shell)
    finally:
        shell.close()


def run_scripts(shell: Shell, commands: list[str], path: str | None) -> int:
    """-c strings in order, then the -f file ("-" reads stdin)."""
    texts = list(commands)
    if path is not None:
        try:
            texts.append(sys.stdin.read() if path == "-" else _read_file(path))
        except OSError as error:
            sys.stderr.write(f"aurora-db sql: cannot read {path}: {error.strerror}\n")
            return EXIT_FAILURE
    for text in texts:
        status = run_script_text(shell, text)
        if status != EXIT_OK:
            return status
    return EXIT_OK


def _read_file(path: str) -> str:
    with open(path, encoding="utf-8") as script:
        return script.read()


def run_script_text(shell: Shell, text: str) -> int:
    try:
        shell.run_text(text)
    except StatementFailed:
        return EXIT_FAILURE
    except QuitRequested:
        return EXIT_OK
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_FAILURE
    return EXIT_OK


def history_path(environ: dict) -> str:
    return os.path.expanduser(environ.get(HISTORY_FILE_ENV) or HISTORY_FILE_DEFAULT)


def run_interactive(shell: Shell) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    try:
        connection = shell.connect()
    except StatementFailed:
        return EXIT_FAILURE
    version = connection.info.parameter_status("server_version") or "unknown"
    shell.out.write(f"aurora-db sql (server {version}), connected to {shell.settings.describe()}.\n"
                    "Type \\? for help, \\q to quit.\n\n")
    dbname = shell.settings.dbname
    session = PromptSession(history=FileHistory(history_path(dict(os.environ))), multiline=True,
                            key_bindings=_enter_runs_complete_input(),
                            prompt_continuation=lambda width, line_number, wrap: _continuation_prompt(
                                session.default_buffer.text, line_number, dbname, width))
    while True:
        try:
            text = session.prompt(f"{dbname}=> ")
        except KeyboardInterrupt:
            continue  # Ctrl-C at the prompt discards the input, as in psql
        except EOFError:
            shell.out.write("\n")
            return EXIT_OK
        try:
            shell.run_text(text)
        except StatementFailed:
            continue
        except QuitRequested:
            return EXIT_OK
        except KeyboardInterrupt:
            shell.err.write("cancelled\n")


def _continuation_prompt(text: str, line_number: int, dbname: str, width: int) -> str:
    before = "\n".join(text.split("\n")[:line_number]) + "\n"
    prompt = f"{dbname}{scan_statements(before).state}> "
    return prompt.rjust(width) if len(prompt) < width else prompt


def _enter_runs_complete_input():
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    @bindings.add("enter")
    def _(event) -> None:
        buffer = event.current_buffer
        if input_is_complete(buffer.text):
            buffer.validate_and_handle()
        else:
            buffer.insert_text("\n")

    return bindings
