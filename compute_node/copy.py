"""COPY ... FROM STDIN and COPY ... TO STDOUT in PostgreSQL's text and binary formats: the
statement, the data formats, and the engine-thread work of one batch of input rows.

Text format (PostgreSQL 15 documentation, COPY, "Text Format"): one row per line, fields separated by
the delimiter (tab), NULL written as \\N, backslash escapes \\b \\f \\n \\r \\t \\v, \\digits (octal),
\\xhex and \\<char>; a line holding only \\. ends the data. Invariants: the NULL string is compared
with a field before its escapes are processed, as PostgreSQL does; rows are inserted with
write_plans' checks and writes, exactly as INSERT inserts them, in the session's transaction, so a
failed COPY leaves what a failed INSERT leaves: nothing, once its transaction rolls back.
Binary format (asyncpg's copy_records_to_table): a signature and header, then per row an Int16
field count and per field an Int32 length (-1 for NULL) and the value as the type's _send writes it.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Iterable, Iterator, Sequence

from aurora_db import pgwire
from aurora_db.errors import (
    DatabaseError,
    FeatureNotSupported,
    SyntaxError_,
    UndefinedTable,
    WrongObjectType,
)
from compute_node import sql_types as t
from compute_node.catalog import TableDef
from compute_node.write_plans import (
    check_row,
    check_sizes,
    check_table_writable,
    check_unique,
    column_positions,
    compile_default,
    write_row,
    write_rows,
)

COPY_BATCH_ROWS_MAX = 2_000  # rows handed to the engine thread in one call
COPY_BATCH_BYTES_MAX = 256 * 1024  # input buffered before a batch is cut, whatever its row count
COPY_CONTEXT_VALUE_CHARS_MAX = 100  # how much of a bad line or value an error's CONTEXT quotes
assert COPY_BATCH_ROWS_MAX > 0 and COPY_BATCH_BYTES_MAX > 0


class BadCopyFileFormat(DatabaseError):
    sqlstate = "22P04"


class CharacterNotInRepertoire(DatabaseError):
    sqlstate = "22021"


class QueryCanceled(DatabaseError):
    sqlstate = "57014"


class InvalidBinaryRepresentation(DatabaseError):
    sqlstate = "22P03"


def with_context(error: DatabaseError, context: str) -> DatabaseError:
    """Attach PostgreSQL's CONTEXT line; pgwire sends it as the W field."""
    if getattr(error, "context", None) is None:
        error.context = context
    return error


# --- the statement ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CopySpec:
    """One parsed COPY statement."""

    direction: str  # "from" (FROM STDIN) or "to" (TO STDOUT)
    table: str | None  # None: COPY (query) TO STDOUT
    columns: tuple[str, ...] | None  # None: every column
    query: str | None  # the text of (query)
    delimiter: str = "\t"
    null: str = "\\N"
    header: bool = False
    binary: bool = False


_TOKEN = re.compile(r"""\s*(?:(?P<estring>[Ee]'(?:[^'\\]|\\.|'')*')|(?P<ident>[A-Za-z_][A-Za-z0-9_$]*)"""
                    r'|"(?P<quoted>(?:[^"]|"")*)"'
                    r"""|'(?P<string>(?:[^']|'')*)'|(?P<number>[0-9]+)|(?P<punct>[(),.;*=]))""", re.S)
_E_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unescape_e_string(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _E_ESCAPES.get(m.group(1), m.group(1)), body).replace("''", "'")


class _Tokens:
    def __init__(self, sql: str):
        self.sql = sql
        self.pos = 0

    def _match(self):
        return _TOKEN.match(self.sql, self.pos)

    def at_end(self) -> bool:
        rest = self.sql[self.pos:].strip()
        return rest in ("", ";")

    def peek_word(self) -> str | None:
        match = self._match()
        return match.group("ident").lower() if match and match.group("ident") else None

    def peek_punct(self) -> str | None:
        match = self._match()
        return match.group("punct") if match else None

    def next(self) -> tuple[str, str]:
        match = self._match()
        if match is None:
            near = self.sql[self.pos:].strip()[:20]
            raise SyntaxError_(f'syntax error at or near "{near}"' if near else "syntax error at end of input")
        self.pos = match.end()
        kind = match.lastgroup
        value = match.group(kind)
        if kind == "ident":
            return "ident", value.lower()
        if kind == "quoted":
            return "ident", value.replace('""', '"')
        if kind == "string":
            return "string", value.replace("''", "'")
        if kind == "estring":
            return "string", _unescape_e_string(value[2:-1])
        return kind, value

    def expect_word(self, *words: str) -> str:
        kind, value = self.next()
        if kind != "ident" or value not in words:
            raise SyntaxError_(f'syntax error at or near "{value}"')
        return value

    def name(self) -> str:
        kind, value = self.next()
        if kind != "ident":
            raise SyntaxError_(f'syntax error at or near "{value}"')
        return value

    def accept_punct(self, punct: str) -> bool:
        if self.peek_punct() == punct:
            self.next()
            return True
        return False

    def parenthesized_text(self) -> str:
        """The text inside a balanced ( ... ) starting here, quotes respected."""
        start = self.sql.index("(", self.pos)
        depth, i, n = 0, start, len(self.sql)
        while i < n:
            ch = self.sql[i]
            if ch in "'\"":
                end = self.sql.find(ch, i + 1)
                while end != -1 and end + 1 < n and self.sql[end + 1] == ch:
                    end = self.sql.find(ch, end + 2)
                if end == -1:
                    raise SyntaxError_("unterminated quoted string in COPY")
                i = end + 1
                continue
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    self.pos = i + 1
                    return self.sql[start + 1:i]
            i += 1
        raise SyntaxError_("syntax error at end of input")


_COPY_START = re.compile(r"^\s*copy\b", re.IGNORECASE)


def is_copy(sql: str) -> bool:
    return _COPY_START.match(sql) is not None


def parse_copy(sql: str) -> CopySpec:
    tokens = _Tokens(sql)
    tokens.expect_word("copy")
    table = query = None
    columns = None
    if tokens.peek_punct() == "(":
        query = tokens.parenthesized_text().strip()
    else:
        if tokens.peek_word() == "only":
            tokens.next()
        table = tokens.name()
        if tokens.accept_punct("."):
            schema, table = table, tokens.name()
            if schema != "public":
                raise UndefinedTable(f'relation "{schema}.{table}" does not exist')
        if tokens.accept_punct("("):
            columns = [tokens.name()]
            while tokens.accept_punct(","):
                columns.append(tokens.name())
            if not tokens.accept_punct(")"):
                raise SyntaxError_("syntax error in COPY column list")
            columns = tuple(columns)
    direction = tokens.expect_word("from", "to")
    kind, endpoint = tokens.next()
    if kind == "string" or endpoint == "program":
        raise FeatureNotSupported(f"COPY {direction.upper()} a file or program is not supported; "
                                  f"use COPY {direction.upper()} {'STDIN' if direction == 'from' else 'STDOUT'} (psql's \\copy)")
    wanted = "stdin" if direction == "from" else "stdout"
    if endpoint != wanted:
        raise SyntaxError_(f'syntax error at or near "{endpoint}"')
    if query is not None and direction == "from":
        raise SyntaxError_('syntax error at or near "("')
    options = _parse_options(tokens)
    if tokens.peek_word() == "where":
        raise FeatureNotSupported("COPY FROM ... WHERE is not supported yet")
    if not tokens.at_end():
        raise SyntaxError_(f'syntax error at or near "{tokens.sql[tokens.pos:].strip()[:20]}"')
    return _spec(direction, table, columns, query, options)


def _parse_options(tokens: _Tokens) -> dict[str, object]:
    options: dict[str, object] = {}
    if tokens.peek_word() == "with":
        tokens.next()
    if tokens.accept_punct("("):  # the modern form: (name value, ...)
        while True:
            name = tokens.name()
            value: object = True
            if tokens.peek_punct() not in (",", ")"):
                kind, value = tokens.next()
                if kind == "ident":
                    value = {"true": True, "on": True, "false": False, "off": False}.get(value, value)
            options[name] = value
            if tokens.accept_punct(")"):
                return options
            if not tokens.accept_punct(","):
                raise SyntaxError_("syntax error in COPY options")
    while (word := tokens.peek_word()) in ("binary", "csv", "header", "delimiter", "null", "freeze", "oids"):
        tokens.next()  # the legacy form: BINARY, DELIMITER [AS] 'x', NULL [AS] 'x', CSV, HEADER
        if word in ("binary", "csv"):
            options["format"] = word
        elif word in ("delimiter", "null"):
            if tokens.peek_word() == "as":
                tokens.next()
            options[word] = tokens.next()[1]
        else:
            options[word] = True
    return options


def _spec(direction, table, columns, query, options) -> CopySpec:
    kwargs = {}
    for name, value in options.items():
        if name == "format":
            if str(value).lower() not in ("text", "binary"):
                raise FeatureNotSupported(f"COPY format {str(value).lower()} is not supported yet (text and binary are)")
            kwargs["binary"] = str(value).lower() == "binary"
        elif name == "delimiter":
            if not isinstance(value, str) or len(value) != 1:
                raise FeatureNotSupported("COPY delimiter must be a single one-byte character")
            if value in "\\\r\n" or value.isalnum():
                raise FeatureNotSupported(f'COPY delimiter cannot be "{value}"')
            kwargs["delimiter"] = value
        elif name == "null":
            kwargs["null"] = str(value)
        elif name == "header":
            if value == "match":
                raise FeatureNotSupported("COPY HEADER MATCH is not supported yet")
            kwargs["header"] = bool(value)
        elif name in ("freeze", "encoding"):
            pass  # FREEZE is a hint; the only encoding is UTF8
        else:
            raise FeatureNotSupported(f'COPY option "{name}" is not supported')
    if kwargs.get("binary") and ({"delimiter", "null", "header"} & set(options)):
        raise SyntaxError_("cannot specify DELIMITER, NULL or HEADER in BINARY mode")
    return CopySpec(direction, table, columns, query, **kwargs)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def select_for_copy_to(spec: CopySpec) -> str:
    """The SELECT whose rows COPY ... TO STDOUT writes."""
    if spec.query is not None:
        return spec.query
    columns = ", ".join(quote_identifier(c) for c in spec.columns) if spec.columns else "*"
    return f"SELECT {columns} FROM {quote_identifier(spec.table)}"


# --- the text format ----------------------------------------------------------------------------

_ESCAPES_IN = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_OCTAL = "01234567"
_HEX = "0123456789abcdefABCDEF"
END_OF_DATA = "\\."


def split_fields(line: str, delimiter: str, null: str) -> list[str | None]:
    """One line of text-format data: its fields, de-escaped, None for NULL."""
    if "\\" not in line:
        return [None if field == null else field for field in line.split(delimiter)]
    fields: list[str | None] = []
    chars: list[str] = []
    start, i, n = 0, 0, len(line)
    while i < n:
        ch = line[i]
        if ch == delimiter:
            fields.append(None if line[start:i] == null else "".join(chars))
            chars = []
            i += 1
            start = i
            continue
        if ch != "\\" or i + 1 >= n:
            chars.append(ch)
            i += 1
            continue
        escaped = line[i + 1]
        i += 2
        if escaped in _ESCAPES_IN:
            chars.append(_ESCAPES_IN[escaped])
        elif escaped in _OCTAL:
            end = i
            while end < n and end < i + 2 and line[end] in _OCTAL:
                end += 1
            chars.append(chr(int(line[i - 1:end], 8) & 0xFF))
            i = end
        elif escaped == "x" and i < n and line[i] in _HEX:
            end = i + 1 if i + 1 < n and line[i + 1] in _HEX else i
            chars.append(chr(int(line[i:end + 1], 16)))
            i = end + 1
        else:
            chars.append(escaped)
    fields.append(None if line[start:] == null else "".join(chars))
    return fields


_ESCAPES_OUT = {"\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
_NEEDS_ESCAPE = re.compile(r"[\\\b\f\n\r\t\v]")


def _escape(text: str, delimiter: str) -> str:
    if _NEEDS_ESCAPE.search(text):
        text = _NEEDS_ESCAPE.sub(lambda m: _ESCAPES_OUT[m.group()], text)
    if delimiter in text:  # a tab delimiter is already escaped as \t above
        text = text.replace(delimiter, "\\" + delimiter)
    return text


def format_line(values: Sequence, type_oids: Sequence[int], delimiter: str = "\t", null: str = "\\N") -> bytes:
    """One row as a line of text-format data, newline included; values print as in a text result."""
    parts = []
    for value, type_oid in zip(values, type_oids):
        if value is None:
            parts.append(null)
            continue
        text = pgwire.format_text(value, type_oid)
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        parts.append(_escape(text, delimiter))
    return (delimiter.join(parts) + "\n").encode("utf-8")


def format_lines(spec: CopySpec, columns, rows: Iterable[Sequence]) -> Iterator[bytes]:
    type_oids = [column.type_oid for column in columns]
    if spec.header:
        yield (spec.delimiter.join(_escape(column.name, spec.delimiter) for column in columns) + "\n").encode("utf-8")
    for row in rows:
        yield format_line(row, type_oids, spec.delimiter, spec.null)


# --- the binary format -------------------------------------------------------------------------

BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_BINARY_HEADER = struct.Struct(">ii")  # flags, header extension length
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
BINARY_TRAILER = _INT16.pack(-1)


class BinaryRows:
    """Cuts a binary COPY stream into rows of raw fields, whatever pieces its bytes arrive in."""

    def __init__(self):
        self.header_read = False
        self.ended = False  # the trailer (field count -1) was read: anything after it is ignored
        self.rows_read = 0

    def take(self, buffer: bytearray) -> list[tuple[int, list[bytes | None]]]:
        """The whole rows at the front of `buffer`, which loses their bytes."""
        rows: list[tuple[int, list[bytes | None]]] = []
        offset = 0
        if not self.header_read:
            fixed = len(BINARY_SIGNATURE) + _BINARY_HEADER.size
            if len(buffer) < fixed:
                return rows
            if bytes(buffer[:len(BINARY_SIGNATURE)]) != BINARY_SIGNATURE:
                raise BadCopyFileFormat("COPY file signature not recognized")
            _, extension_bytes = _BINARY_HEADER.unpack_from(buffer, len(BINARY_SIGNATURE))
            if extension_bytes < 0:
                raise BadCopyFileFormat("invalid COPY file header (wrong length)")
            if len(buffer) < fixed + extension_bytes:
                return rows
            offset = fixed + extension_bytes
            self.header_read = True
        size = len(buffer)
        while not self.ended and size - offset >= _INT16.size:
            (field_count,) = _INT16.unpack_from(buffer, offset)
            if field_count == -1:
                self.ended = True
                offset = size
                break
            if field_count < 0:
                raise BadCopyFileFormat(f"row field count is {field_count}")
            position, fields = offset + _INT16.size, []
            for _ in range(field_count):
                if size - position < _INT32.size:
                    break
                (length,) = _INT32.unpack_from(buffer, position)
                position += _INT32.size
                if length == -1:
                    fields.append(None)
                    continue
                if length < 0:
                    raise BadCopyFileFormat("invalid field size")
                if size - position < length:
                    break
                fields.append(bytes(buffer[position:position + length]))
                position += length
            if len(fields) < field_count:
                break  # the rest of this row is still on its way
            self.rows_read += 1
            rows.append((self.rows_read, fields))
            offset = position
        del buffer[:offset]
        return rows

    def finish(self, buffer: bytearray) -> None:
        if buffer and not self.ended:
            raise BadCopyFileFormat("unexpected EOF in COPY data")


def binary_type_oids(columns) -> list[int]:
    """The OIDs COPY TO ... (FORMAT binary) writes; a type without a binary form here is refused."""
    oids = [column.type_oid for column in columns]
    for column in columns:
        if not pgwire.binary_output_supported(column.type_oid):
            raise FeatureNotSupported(f'binary COPY of column "{column.name}" (type oid {column.type_oid}) '
                                      f'is not supported yet')
    return oids


def format_binary(columns, rows: Iterable[Sequence]) -> Iterator[bytes]:
    type_oids = binary_type_oids(columns)
    yield BINARY_SIGNATURE + _BINARY_HEADER.pack(0, 0)
    for row in rows:
        parts = [_INT16.pack(len(row))]
        for value, type_oid in zip(row, type_oids):
            if value is None:
                parts.append(_INT32.pack(-1))
            else:
                raw = pgwire.encode_binary_value(value, type_oid)
                parts.append(_INT32.pack(len(raw)) + raw)
        yield b"".join(parts)
    yield BINARY_TRAILER


def copy_out_chunks(spec: CopySpec, columns, rows: Iterable[Sequence]) -> Iterator[bytes]:
    return format_binary(columns, rows) if spec.binary else format_lines(spec, columns, rows)


# --- COPY FROM on the engine thread -------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CopyTarget:
    """The table COPY FROM fills and, per input field, the column it goes to."""

    table: TableDef
    positions: tuple[int, ...]


def resolve_target(spec: CopySpec, tables: dict[str, TableDef]) -> CopyTarget:
    table = tables.get(spec.table)
    if table is None:
        raise UndefinedTable(f'relation "{spec.table}" does not exist')
    if table.is_view:
        raise WrongObjectType(f'cannot copy to view "{spec.table}"',
                              hint="To enable copying to a view, provide an INSTEAD OF INSERT trigger.")
    if spec.columns is None:
        return CopyTarget(table, tuple(range(len(table.columns))))
    return CopyTarget(table, tuple(column_positions(table, spec.columns)))


def _quoted(text: str) -> str:
    if len(text) > COPY_CONTEXT_VALUE_CHARS_MAX:
        text = text[:COPY_CONTEXT_VALUE_CHARS_MAX] + "..."
    return f'"{text}"'


def _text_fields(table, positions, spec, number, raw) -> list[str | None]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise with_context(CharacterNotInRepertoire('invalid byte sequence for encoding "UTF8"'),
                           f"COPY {table.name}, line {number}") from None
    fields = split_fields(line, spec.delimiter, spec.null)
    if len(fields) != len(positions):
        if len(fields) > len(positions):
            error = BadCopyFileFormat("extra data after last expected column")
        else:
            error = BadCopyFileFormat(f'missing data for column "{table.columns[positions[len(fields)]].name}"')
        raise with_context(error, f"COPY {table.name}, line {number}: {_quoted(line)}")
    return fields


def _binary_value(raw: bytes, column, table, number):
    """One binary field as a value of the column's type."""
    type_oid = t.OIDS.get(column.type_name)
    if type_oid is None:
        raise FeatureNotSupported(f'binary COPY into column "{column.name}" of type {column.type_name} '
                                  f'is not supported yet')
    try:
        value = pgwire.decode_parameter(raw, pgwire.BINARY_FORMAT, type_oid, 1)
    except DatabaseError:
        raise with_context(InvalidBinaryRepresentation("incorrect binary data format"),
                           f"COPY {table.name}, line {number}, column {column.name}") from None
    source = "text" if isinstance(value, str) else column.type_name
    return t.assign(value, source, column.type_name, column.type_modifier)


def insert_lines(ctx, target: CopyTarget, spec: CopySpec, lines: list[tuple[int, object]]) -> int:
    """Convert, check and insert a batch of (line number, raw line) rows, or of (row number, raw
    fields) rows in the binary format; returns rows inserted.
    Columns not listed get their defaults; each row goes through check_row, check_unique and
    write_row, as InsertPlan inserts a row (COPY, like PostgreSQL's, fills identity columns too);
    into a table without indexes the batch's rows go a page at a time (write_rows)."""
    table = target.table
    columns = table.columns
    positions = target.positions
    width = len(positions)
    conversions = [(position, columns[position]) for position in positions]
    listed = set(positions)
    defaults = [(position, compile_default(column, [])) for position, column in enumerate(columns)
                if position not in listed]
    check_table_writable(ctx, table)
    bulk: list[list] | None = None if table.indexes else []  # rows for write_rows: no entries to make
    count = 0
    for number, raw in lines:
        if spec.binary:
            fields = raw
            if len(fields) != width:
                raise with_context(BadCopyFileFormat(f"row field count is {len(fields)}, expected {width}"),
                                   f"COPY {table.name}, line {number}")
        else:
            fields = _text_fields(table, positions, spec, number, raw)
        values = [None] * len(columns)
        for position, default in defaults:
            values[position] = default(ctx)
        for field, (position, column) in zip(fields, conversions):
            if field is None:
                continue
            if spec.binary:
                values[position] = _binary_value(field, column, table, number)
                continue
            try:
                values[position] = t.assign(field, "text", column.type_name, column.type_modifier)
            except DatabaseError as error:
                raise with_context(error, f"COPY {table.name}, line {number}, column {column.name}: "
                                          f"{_quoted(field)}") from None
        try:
            check_row(table, values)
            if bulk is not None:
                check_sizes(table, values)
                bulk.append(values)
            else:
                check_unique(ctx, table, values)
                write_row(ctx, table, values)
        except DatabaseError as error:
            raise with_context(error, f"COPY {table.name}, line {number}") from None
        count += 1
    if bulk:
        write_rows(ctx, table, bulk)
    return count
