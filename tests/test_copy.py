"""COPY FROM STDIN and COPY TO STDOUT in PostgreSQL's text format, over the simple and the extended
protocol, with psycopg's cursor.copy(), psql's \\copy and raw protocol messages against a real cluster;
and the text format itself, without a cluster."""

from __future__ import annotations

import itertools
import shutil
import socket
import struct
import subprocess

import psycopg
import psycopg.errors
import pytest

from compute_node import copy as copy_text
from tests.admin import writer_status

PSQL_TIMEOUT_S = 60
SOCKET_TIMEOUT_S = 30
_names = itertools.count()


@pytest.fixture
def table(sql_cluster):
    name = f"copy_{next(_names)}"
    with sql_cluster.connect() as connection:
        connection.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text, f float8, b bool)")
    yield name
    with sql_cluster.connect() as connection:
        connection.execute(f"DROP TABLE IF EXISTS {name}")


def count(connection, table) -> int:
    return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# The text format.


def test_fields_are_split_and_unescaped_as_postgresql_reads_them():
    assert copy_text.split_fields("1\t\\N\ta\\tb\\\\c\\nd\\x41\\101\t", "\t", "\\N") == ["1", None, "a\tb\\c\ndAA", ""]
    assert copy_text.split_fields("a|b\\|c|", "|", "") == ["a", "b|c", None]
    assert copy_text.split_fields("\\N", "\t", "\\N") == [None]
    assert copy_text.split_fields("x\\N", "\t", "\\N") == ["xN"]  # NULL is compared before unescaping


def test_rows_are_written_with_escapes_and_null_markers():
    assert copy_text.format_line([1, None, "a\tb\\c\nd", True, 1.5], [23, 25, 25, 16, 701]) == \
        b"1\t\\N\ta\\tb\\\\c\\nd\tt\t1.5\n"
    assert copy_text.format_line(["x|y"], [25], "|", "") == b"x\\|y\n"


def test_binary_rows_are_cut_from_pieces_of_any_size():
    stream = (copy_text.BINARY_SIGNATURE + struct.pack(">ii", 0, 0)
              + struct.pack(">hi", 2, 4) + struct.pack(">i", 7) + struct.pack(">i", -1)
              + struct.pack(">hi", 2, 1) + b"x" + struct.pack(">i", 0) + copy_text.BINARY_TRAILER + b"ignored")
    reader, buffer, rows = copy_text.BinaryRows(), bytearray(), []
    for byte in stream:
        buffer.append(byte)
        rows += reader.take(buffer)
    reader.finish(buffer)
    assert rows == [(1, [struct.pack(">i", 7), None]), (2, [b"x", b""])]
    with pytest.raises(copy_text.BadCopyFileFormat):
        copy_text.BinaryRows().take(bytearray(b"NOTPGCOPY\n" + bytes(20)))


def test_copy_statements_parse_in_every_form_clients_send():
    spec = copy_text.parse_copy("copy pgbench_accounts from stdin with (freeze on)")
    assert (spec.direction, spec.table, spec.columns) == ("from", "pgbench_accounts", None)
    spec = copy_text.parse_copy('COPY "T" (a, "B") FROM STDIN (FORMAT text, DELIMITER \',\', NULL \'\')')
    assert (spec.table, spec.columns, spec.delimiter, spec.null) == ("T", ("a", "B"), ",", "")
    spec = copy_text.parse_copy("COPY (SELECT a, ')' FROM t) TO STDOUT WITH DELIMITER AS '|' HEADER")
    assert (spec.direction, spec.query, spec.delimiter, spec.header) == ("to", "SELECT a, ')' FROM t", "|", True)
    with pytest.raises(copy_text.FeatureNotSupported):
        copy_text.parse_copy("COPY t FROM '/etc/passwd'")
    with pytest.raises(copy_text.FeatureNotSupported):
        copy_text.parse_copy("COPY t TO STDOUT (FORMAT csv)")


# Against a cluster.


def test_copy_in_and_out_round_trips_many_rows_in_batches(sql_cluster, table):
    rows = [(i, None if i % 7 == 0 else f"v{i}\t\\ \n", i / 4, i % 2 == 0)
            for i in range(copy_text.COPY_BATCH_ROWS_MAX * 2 + 17)]
    with sql_cluster.connect() as connection, connection.cursor() as cursor:
        with cursor.copy(f"COPY {table} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        assert cursor.statusmessage == f"COPY {len(rows)}"
        with cursor.copy(f"COPY {table} TO STDOUT") as copy:
            copy.set_types(["int4", "text", "float8", "bool"])
            assert sorted(copy.rows()) == rows
        assert connection.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == ("v1\t\\ \n",)


def test_copy_into_a_table_without_indexes_logs_a_page_of_rows_per_record(sql_cluster):
    """The bulk path (write_rows): the rows come back whole, from storage too (this cluster's cache
    is small), with far fewer redo records than rows; and a bad line in a later batch leaves
    nothing of the earlier ones."""
    rows = [(i, f"row {i} " + "x" * (i % 50)) for i in range(copy_text.COPY_BATCH_ROWS_MAX * 2 + 17)]
    with sql_cluster.connect() as connection, connection.cursor() as cursor:
        connection.execute("CREATE TABLE copy_bulk (id int, v text)")
        records_before = writer_status(sql_cluster.admin_port)["records_made"]
        with cursor.copy("COPY copy_bulk FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        records = writer_status(sql_cluster.admin_port)["records_made"] - records_before
        assert records < len(rows) / 10, f"{records} redo records for {len(rows)} rows"
        assert connection.execute("SELECT id, v FROM copy_bulk ORDER BY id").fetchall() == rows
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with cursor.copy("COPY copy_bulk FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
                copy.write(b"oops\tlast\n")
        assert count(connection, "copy_bulk") == len(rows), "the failed COPY's rows must not survive"
        connection.execute("BEGIN")
        with cursor.copy("COPY copy_bulk FROM STDIN") as copy:
            copy.write(b"-1\tin a block\n")
        assert count(connection, "copy_bulk") == len(rows) + 1
        connection.execute("ROLLBACK")
        assert count(connection, "copy_bulk") == len(rows)
        connection.execute("INSERT INTO copy_bulk VALUES (-2, 'after')")
        assert connection.execute("SELECT v FROM copy_bulk WHERE id < 0").fetchall() == [("after",)]


def test_copy_out_of_a_query_with_options(sql_cluster, table):
    with sql_cluster.connect() as connection, connection.cursor() as cursor:
        connection.execute(f"INSERT INTO {table} VALUES (1, 'a|b', 0.5, true), (2, NULL, 1, false)")
        with cursor.copy(f"COPY (SELECT id, v FROM {table} ORDER BY id) TO STDOUT "
                         f"WITH (DELIMITER '|', NULL 'nil', HEADER)") as copy:
            data = b"".join(copy)
        assert data == b"id|v\n1|a\\|b\n2|nil\n"


def test_copy_with_a_column_list_fills_the_rest_with_defaults(sql_cluster):
    with sql_cluster.connect() as connection, connection.cursor() as cursor:
        connection.execute("CREATE TABLE copy_defaults (id int PRIMARY KEY, v text DEFAULT 'dflt', n int)")
        with cursor.copy("COPY copy_defaults (n, id) FROM STDIN") as copy:
            copy.write(b"7\t1\n\\N\t2\n")
        assert connection.execute("SELECT * FROM copy_defaults ORDER BY id").fetchall() == \
            [(1, "dflt", 7), (2, "dflt", None)]


@pytest.mark.parametrize("data, error, sqlstate, context", [
    (b"10\tx\t1\tt\n11\tx\tzz\tt\n", psycopg.errors.InvalidTextRepresentation, "22P02",
     'COPY {t}, line 2, column f: "zz"'),
    (b"10\tx\t1\tt\n1\tdup\t1\tt\n", psycopg.errors.UniqueViolation, "23505", "COPY {t}, line 2"),
    (b"10\tx\t1\tt\n\\N\tx\t1\tt\n", psycopg.errors.NotNullViolation, "23502", "COPY {t}, line 2"),
    (b"10\tx\n", psycopg.errors.BadCopyFileFormat, "22P04", 'COPY {t}, line 1: "10\tx"'),
    (b"10\tx\t1\tt\textra\n", psycopg.errors.BadCopyFileFormat, "22P04", 'COPY {t}, line 1: "10\tx\t1\tt\textra"'),
])
def test_bad_input_fails_with_postgresqls_error_and_context_and_nothing_is_applied(
        sql_cluster, table, data, error, sqlstate, context):
    with sql_cluster.connect() as connection, connection.cursor() as cursor:
        connection.execute(f"INSERT INTO {table} VALUES (1, 'one', 1, true)")
        with pytest.raises(error) as caught:
            with cursor.copy(f"COPY {table} FROM STDIN") as copy:
                copy.write(data)
        assert caught.value.sqlstate == sqlstate
        assert caught.value.diag.context == context.format(t=table)
        assert count(connection, table) == 1, "the rows before the bad one must not survive"
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_a_failed_copy_fails_the_transaction_block(sql_cluster, table):
    with sql_cluster.connect() as connection, connection.cursor() as cursor:
        connection.execute("BEGIN")
        with cursor.copy(f"COPY {table} (id) FROM STDIN") as copy:
            copy.write(b"1\n2\n")
        assert count(connection, table) == 2, "a block sees its own COPY"
        with pytest.raises(psycopg.errors.UniqueViolation):
            with cursor.copy(f"COPY {table} (id) FROM STDIN") as copy:
                copy.write(b"3\n1\n")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            connection.execute("SELECT 1")
        connection.execute("ROLLBACK")
        assert count(connection, table) == 0


def test_copy_fail_from_the_client_cancels_the_copy(sql_cluster, table):
    with sql_cluster.connect() as connection, connection.cursor() as cursor:
        with pytest.raises(RuntimeError):  # psycopg sends CopyFail, then re-raises the client's error
            with cursor.copy(f"COPY {table} (id) FROM STDIN") as copy:
                copy.write(b"1\n2\n")
                raise RuntimeError("the client changed its mind")
        assert count(connection, table) == 0


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_psql_backslash_copy_in_and_out(sql_cluster, table, tmp_path):
    source, target = tmp_path / "in.tsv", tmp_path / "out.tsv"
    source.write_text("1\ta\t0.5\tt\n2\t\\N\t1\tf\n")
    result = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", sql_cluster.url, "-c", f"\\copy {table} from '{source}'",
         "-c", f"\\copy (SELECT id, v FROM {table} ORDER BY id) to '{target}'"],
        capture_output=True, text=True, timeout=PSQL_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["COPY", "2", "COPY", "2"]
    assert target.read_text() == "1\ta\n2\t\\N\n"


# The extended protocol, message by message (libpq's own COPY uses the simple protocol).


def _message(type_byte: bytes, body: bytes = b"") -> bytes:
    return type_byte + struct.pack(">i", len(body) + 4) + body


def _cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


class RawClient:
    def __init__(self, port: int):
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S)
        body = struct.pack(">i", 3 << 16) + _cstring("user") + _cstring("postgres") + b"\x00"
        self.socket.sendall(struct.pack(">i", len(body) + 4) + body)
        self.buffer = b""
        self.until(b"Z")

    def send(self, *messages: bytes) -> None:
        self.socket.sendall(b"".join(messages))

    def receive(self) -> tuple[bytes, bytes]:
        while len(self.buffer) < 5 or len(self.buffer) < 1 + struct.unpack_from(">i", self.buffer, 1)[0]:
            chunk = self.socket.recv(65536)
            assert chunk, "the server closed the connection"
            self.buffer += chunk
        length = struct.unpack_from(">i", self.buffer, 1)[0]
        message = (self.buffer[:1], self.buffer[5:1 + length])
        self.buffer = self.buffer[1 + length:]
        return message

    def until(self, type_byte: bytes) -> list[tuple[bytes, bytes]]:
        messages = []
        while True:
            messages.append(self.receive())
            if messages[-1][0] == type_byte:
                return messages

    def close(self) -> None:
        self.send(_message(b"X"))
        self.socket.close()


def _extended(sql: str) -> list[bytes]:
    return [_message(b"P", _cstring("") + _cstring(sql) + struct.pack(">h", 0)),
            _message(b"B", _cstring("") + _cstring("") + struct.pack(">hhh", 0, 0, 0)),
            _message(b"D", b"P" + _cstring("")),
            _message(b"E", _cstring("") + struct.pack(">i", 0))]


def test_copy_in_and_out_through_the_extended_protocol(sql_cluster, table):
    client = RawClient(sql_cluster.port)
    try:
        client.send(*_extended(f"COPY {table} (id, v) FROM STDIN"), _message(b"H"))
        replies = client.until(b"G")
        assert [kind for kind, _ in replies] == [b"1", b"2", b"n", b"G"]
        assert replies[-1][1] == b"\x00" + struct.pack(">hhh", 2, 0, 0)
        client.send(_message(b"d", b"1\ta\n2\t"), _message(b"d", b"b\n"), _message(b"H"), _message(b"c"),
                    _message(b"S"))
        replies = client.until(b"Z")
        assert replies == [(b"C", b"COPY 2\x00"), (b"Z", b"I")], "committed at Sync, outside a block"
        client.send(*_extended(f"COPY (SELECT id, v FROM {table} ORDER BY id) TO STDOUT"), _message(b"S"))
        replies = client.until(b"Z")
        assert [kind for kind, _ in replies] == [b"1", b"2", b"n", b"H", b"d", b"d", b"c", b"C", b"Z"]
        assert [body for kind, body in replies if kind == b"d"] == [b"1\ta\n", b"2\tb\n"]
        client.send(*_extended(f"COPY {table} (id) FROM STDIN"), _message(b"S"))
        client.until(b"G")
        client.send(_message(b"d", b"3\n"), _message(b"f", _cstring("stop")), _message(b"S"))
        replies = client.until(b"Z")
        assert replies[0][0] == b"E" and b"C57014\x00" in replies[0][1]
        assert replies[-1] == (b"Z", b"I")
    finally:
        client.close()
    with sql_cluster.connect() as connection:
        assert connection.execute(f"SELECT id FROM {table} ORDER BY id").fetchall() == [(1,), (2,)]
