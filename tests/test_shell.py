"""The SQL shell: statement splitting and psql-style formatting as pure functions, then the real
`aurora-db sql` process against a scratch PostgreSQL 15 (tests/pg_oracle.py), in script mode and in
a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from aurora_db.shell import (
    STATE_BLOCK_COMMENT,
    STATE_DOLLAR_QUOTE,
    STATE_DOUBLE_QUOTE,
    STATE_NORMAL,
    STATE_PARENTHESIS,
    STATE_SINGLE_QUOTE,
    ConnectionSettings,
    format_error,
    format_result,
    format_table,
    format_table_description,
    format_table_list,
    input_is_complete,
    parse_relation_name,
    resolve_settings,
    scan_statements,
    split_statements,
)
from tests.pg_oracle import postgres_server  # noqa: F401  (the session fixture)

AURORA_DB = str(Path(sys.executable).with_name("aurora-db"))
SHELL_TIMEOUT_S = 30
PTY_EXPECT_TIMEOUT_S = 20


# ---------------------------------------------------------------------------------------------
# Statement splitting
# ---------------------------------------------------------------------------------------------

def test_statements_end_at_semicolons_and_lose_their_semicolon():
    scan = scan_statements("SELECT 1; SELECT 2;\nINSERT INTO t VALUES (1);")
    assert scan.statements == ["SELECT 1", "SELECT 2", "INSERT INTO t VALUES (1)"]
    assert scan.remainder_is_blank


def test_an_unterminated_statement_stays_in_the_remainder():
    scan = scan_statements("SELECT 1; SELECT\n  2")
    assert scan.statements == ["SELECT 1"]
    assert scan.remainder == " SELECT\n  2"
    assert scan.remainder_has_sql and scan.state == STATE_NORMAL


def test_semicolons_inside_quotes_and_comments_do_not_end_a_statement():
    text = ("SELECT 'a;b', 'it''s;', \"odd;name\", E'\\';x', $$ ; $$, $fn$ ; $$ ; $fn$ -- no; end\n"
            "/* not; /* nested; */ here; */ FROM t;")
    statements = split_statements(text)
    assert len(statements) == 1
    assert statements[0].startswith("SELECT 'a;b', 'it''s;', \"odd;name\", E'\\';x', $$ ; $$, $fn$ ; $$ ; $fn$")
    assert statements[0].endswith("FROM t")


def test_comments_are_removed_and_comment_only_statements_are_dropped():
    assert split_statements("-- just a comment\n;/* and */; SELECT /* inline */ 1 -- tail\n;") == ["SELECT   1"]


def test_an_e_inside_an_identifier_does_not_start_an_escape_string():
    # In "name'" the quote follows the e of an identifier: standard quoting, backslash is literal.
    assert split_statements("SELECT 'a\\'; SELECT 2;") == ["SELECT 'a\\'", "SELECT 2"]


def test_positional_parameters_and_dollar_in_identifiers_are_not_dollar_quotes():
    assert split_statements("SELECT $1, a$b$c; SELECT 2;") == ["SELECT $1, a$b$c", "SELECT 2"]


@pytest.mark.parametrize("text, state", [
    ("SELECT 'abc", STATE_SINGLE_QUOTE),
    ('SELECT "abc', STATE_DOUBLE_QUOTE),
    ("SELECT $tag$ abc $$", STATE_DOLLAR_QUOTE),
    ("SELECT /* abc", STATE_BLOCK_COMMENT),
    ("SELECT (1,", STATE_PARENTHESIS),
    ("SELECT 1", STATE_NORMAL),
])
def test_the_scan_reports_where_unfinished_input_stops(text, state):
    scan = scan_statements(text)
    assert scan.statements == [] and scan.state == state and not scan.remainder_is_blank


def test_the_last_statement_of_a_script_runs_without_a_semicolon():
    assert split_statements("SELECT 1;\nSELECT 2\n") == ["SELECT 1", "SELECT 2"]


@pytest.mark.parametrize("text, complete", [
    ("SELECT 1;", True),
    ("SELECT 1", False),
    ("SELECT 1;\nSELECT", False),
    ("SELECT ';'", False),
    ("SELECT ';';", True),
    ("\\dt", True),
    ("", True),
    ("-- only a comment", True),
    ("/* open", False),
])
def test_enter_runs_the_input_only_when_it_is_complete(text, complete):
    assert input_is_complete(text) is complete


# ---------------------------------------------------------------------------------------------
# Formatting (the expected strings are psql 15's own output)
# ---------------------------------------------------------------------------------------------

def test_a_table_has_centred_headers_right_aligned_numbers_and_empty_nulls():
    text = format_result(["id", "name", "n", "x"], [["1", "alice", None, "12.5"]], [True, False, False, True])
    assert text == (" id | name  | n |  x   \n"
                    "----+-------+---+------\n"
                    "  1 | alice |   | 12.5\n"
                    "(1 row)\n\n")


def test_the_last_column_is_not_padded_and_the_row_count_is_plural():
    text = format_result(["a", "ab", "abcd"], [["x", "y", "zz"], ["x", "y", "z"]], [False] * 3)
    assert text == (" a | ab | abcd \n"
                    "---+----+------\n"
                    " x | y  | zz\n"
                    " x | y  | z\n"
                    "(2 rows)\n\n")


def test_values_with_newlines_continue_with_a_plus():
    text = format_result(["id", "name", "v"], [["1", "a", "2.50"], ["2", "b\nc", None]], [True, False, True])
    assert text == (" id | name |  v   \n"
                    "----+------+------\n"
                    "  1 | a    | 2.50\n"
                    "  2 | b   +|     \n"
                    "    | c    | \n"
                    "(2 rows)\n\n")


def test_an_empty_result_still_shows_its_header():
    assert format_result(["longheadername", "b"], [], [False, True]) == (
        " longheadername | b \n----------------+---\n(0 rows)\n\n")


def test_wide_characters_take_two_columns():
    assert format_table(["x", "y"], [["日本", "ab"]]) == "  x   | y  \n------+----\n 日本 | ab\n"


def test_rows_without_columns_print_a_bare_rule():
    assert format_result([], [[]], []) == "--\n(1 row)\n\n"


def test_errors_carry_the_sqlstate():
    assert format_error('syntax error at or near "selec"', "42601") == (
        'ERROR:  syntax error at or near "selec" (SQLSTATE 42601)\n')
    assert format_error("boom", None, detail="why", hint="try") == "ERROR:  boom\nDETAIL:  why\nHINT:  try\n"


def test_table_list_keeps_only_base_tables():
    text = format_table_list([("public", "accounts", "BASE TABLE"), ("public", "v", "VIEW"),
                              ("public", "t", "BASE TABLE")])
    assert text == ("     List of relations\n"
                    " Schema |   Name   | Type  \n"
                    "--------+----------+-------\n"
                    " public | accounts | table\n"
                    " public | t        | table\n"
                    "(2 rows)\n\n")
    assert format_table_list([("public", "v", "VIEW")]) is None
    assert "accounts" not in format_table_list([("public", "accounts", "BASE TABLE"), ("public", "t", "BASE TABLE")], "t")


def test_describe_combines_columns_constraints_and_key_columns():
    columns = [("name", "character varying", 20, "NO", "'x'::character varying", 2),
               ("id", "integer", None, "NO", None, 1)]
    constraints = [("t_name_key", "UNIQUE"), ("t_pkey", "PRIMARY KEY"), ("2200_1_1_not_null", "CHECK")]
    key_columns = [("t_pkey", "b", 2), ("t_pkey", "id", 1), ("t_name_key", "name", 1)]
    assert format_table_description("t", columns, constraints, key_columns) == (
        "" + " " * 29 + 'Table "t"\n'
        " Column |         Type          | Nullable |        Default         \n"
        "--------+-----------------------+----------+------------------------\n"
        " id     | integer               | not null | \n"
        " name   | character varying(20) | not null | 'x'::character varying\n"
        "Indexes:\n"
        '    "t_pkey" PRIMARY KEY (id, b)\n'
        '    "t_name_key" UNIQUE (name)\n'
        "\n")


@pytest.mark.parametrize("text, name", [("Accounts", "accounts"), ('"Accounts"', "Accounts"),
                                        ("public.t", "t"), ('"a.b"', "a.b"), ('"say ""hi"""', 'say "hi"')])
def test_relation_names_fold_like_psql(text, name):
    assert parse_relation_name(text) == name


# ---------------------------------------------------------------------------------------------
# Connection settings
# ---------------------------------------------------------------------------------------------

def test_settings_default_to_local_postgres():
    assert resolve_settings(None, None, None, None, None, {}) == ConnectionSettings("127.0.0.1", 5432, "postgres", "postgres")


def test_flags_win_over_the_url_which_wins_over_the_environment():
    environ = {"PGHOST": "envhost", "PGPORT": "7000", "PGUSER": "envuser", "PGDATABASE": "envdb"}
    assert resolve_settings(None, None, None, None, None, environ) == ConnectionSettings("envhost", 7000, "envuser", "envdb")
    from_url = resolve_settings("postgresql://u:secret@h:6000/d", None, None, None, None, environ)
    assert from_url == ConnectionSettings("h", 6000, "u", "d", "secret")
    assert resolve_settings("postgresql://u@h:6000/d", None, 6001, None, None, environ).port == 6001
    assert resolve_settings("postgresql://h", None, None, None, None, environ).user == "envuser"


def test_a_url_of_another_scheme_is_refused():
    with pytest.raises(ValueError):
        resolve_settings("mysql://h/d", None, None, None, None, {})


# ---------------------------------------------------------------------------------------------
# The real shell against PostgreSQL 15
# ---------------------------------------------------------------------------------------------

def run_shell(server, *arguments: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([AURORA_DB, "sql", "--port", str(server.port), *arguments], input=stdin,
                          capture_output=True, text=True, timeout=SHELL_TIMEOUT_S)


def test_commands_run_in_order_and_print_tables_and_tags(postgres_server):
    result = run_shell(postgres_server,
                       "-c", "DROP TABLE IF EXISTS shell_c; CREATE TABLE shell_c (id int, name text)",
                       "-c", "INSERT INTO shell_c VALUES (1, 'one'), (2, NULL)",
                       "-c", "SELECT id, name FROM shell_c ORDER BY id")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("DROP TABLE\nCREATE TABLE\nINSERT 0 2\n"
                             " id | name \n----+------\n  1 | one\n  2 | \n(2 rows)\n\n")


def test_the_output_matches_psql_byte_for_byte(postgres_server):
    query = "SELECT 1 AS a, 'p' || chr(10) || 'qqq' AS w, 2.50::numeric AS n, NULL AS z, true AS b"
    ours = run_shell(postgres_server, "-c", query).stdout
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    theirs = subprocess.run([psql, "-X", postgres_server.url, "-c", query], capture_output=True, text=True,
                            timeout=SHELL_TIMEOUT_S).stdout
    assert ours == theirs


def test_a_file_runs_statements_spanning_lines_and_meta_commands(postgres_server, tmp_path):
    script = tmp_path / "script.sql"
    script.write_text("DROP TABLE IF EXISTS shell_f;\n"
                      "CREATE TABLE shell_f (\n  id int PRIMARY KEY, -- the key\n  note varchar(10) NOT NULL\n);\n"
                      "\\timing on\n"
                      "INSERT INTO shell_f VALUES (1, 'a;b');\n"
                      "SELECT note FROM shell_f\n")
    result = run_shell(postgres_server, "-f", str(script))
    assert result.returncode == 0, result.stderr
    assert "Timing is on.\nINSERT 0 1\nTime: " in result.stdout
    assert " note \n------\n a;b\n(1 row)\n" in result.stdout


def test_piped_stdin_is_a_script(postgres_server):
    result = run_shell(postgres_server, stdin="SELECT 40 + 2 AS answer;\nSELECT 'x' AS y")
    assert result.returncode == 0, result.stderr
    assert result.stdout == " answer \n--------\n     42\n(1 row)\n\n y \n---\n x\n(1 row)\n\n"


def test_a_failing_statement_stops_the_script_with_status_1(postgres_server):
    result = run_shell(postgres_server, stdin="SELECT 1 AS first;\nSELEC 2;\nSELECT 3 AS never;\n")
    assert result.returncode == 1
    assert "first" in result.stdout and "never" not in result.stdout
    assert result.stderr == 'ERROR:  syntax error at or near "SELEC" (SQLSTATE 42601)\n'


def test_the_users_transaction_passes_through(postgres_server):
    result = run_shell(postgres_server, "-c", "DROP TABLE IF EXISTS shell_tx; CREATE TABLE shell_tx (v int);"
                       " BEGIN; INSERT INTO shell_tx VALUES (1); ROLLBACK; SELECT count(*) AS n FROM shell_tx")
    assert result.returncode == 0, result.stderr
    assert "BEGIN\nINSERT 0 1\nROLLBACK\n n \n---\n 0\n(1 row)\n" in result.stdout


def test_dt_and_d_describe_tables(postgres_server):
    setup = run_shell(postgres_server, "-c", "DROP TABLE IF EXISTS shell_d; CREATE TABLE shell_d "
                      "(id int PRIMARY KEY, name varchar(20) NOT NULL DEFAULT 'x', v numeric)")
    assert setup.returncode == 0, setup.stderr
    listing = run_shell(postgres_server, "-c", "\\dt shell_d")
    assert listing.returncode == 0, listing.stderr
    assert " public | shell_d | table\n(1 row)\n" in listing.stdout
    described = run_shell(postgres_server, "-c", "\\d shell_d")
    assert described.returncode == 0, described.stderr
    assert described.stdout == (
        " " * 26 + 'Table "shell_d"\n'  # centred over the header line's 68 columns
        " Column |         Type          | Nullable |        Default         \n"
        "--------+-----------------------+----------+------------------------\n"
        " id     | integer               | not null | \n"
        " name   | character varying(20) | not null | 'x'::character varying\n"
        " v      | numeric               |          | \n"
        "Indexes:\n"
        '    "shell_d_pkey" PRIMARY KEY (id)\n\n')
    missing = run_shell(postgres_server, "-c", "\\d no_such_table")
    assert missing.returncode == 1
    assert 'Did not find any relation named "no_such_table"' in missing.stderr


def test_an_unknown_meta_command_fails(postgres_server):
    result = run_shell(postgres_server, "-c", "\\frobnicate")
    assert result.returncode == 1 and "invalid command \\frobnicate" in result.stderr


def test_no_server_gives_status_1_and_says_where(tmp_path):
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run([AURORA_DB, "sql", "--port", str(port), "-c", "SELECT 1"], capture_output=True,
                            text=True, timeout=SHELL_TIMEOUT_S)
    assert result.returncode == 1
    assert f"could not connect to server at 127.0.0.1:{port}" in result.stderr


# ---------------------------------------------------------------------------------------------
# Interactive, in a pseudo-terminal
# ---------------------------------------------------------------------------------------------

class Terminal:
    """A child process on a pseudo-terminal. `expect` reads until some text has appeared after the
    previous match (carriage returns dropped) and moves past it, like pexpect."""

    def __init__(self, argv: list[str], env: dict):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                        start_new_session=True, close_fds=True)
        os.close(slave)
        self.seen = ""
        self.matched_up_to = 0

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def expect(self, text: str, timeout_s: float = PTY_EXPECT_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while (found := self.seen.find(text, self.matched_up_to)) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"did not see {text!r}; the terminal showed:\n{self.seen[self.matched_up_to:]}")
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the shell exited before showing {text!r}:\n{self.seen[self.matched_up_to:]}")
                self.seen += chunk.decode(errors="replace").replace("\r", "")
        self.matched_up_to = found + len(text)

    def wait(self, timeout_s: float = PTY_EXPECT_TIMEOUT_S) -> int:
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536).decode(errors="replace")
                except OSError:
                    break
        return self.process.wait(timeout=max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


@pytest.fixture
def terminal(postgres_server, tmp_path):
    env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1",
           "AURORA_DB_HISTFILE": str(tmp_path / "history")}
    session = Terminal([AURORA_DB, "sql", postgres_server.url], env)
    yield session
    session.close()


def test_interactive_multi_line_statement_shows_a_table(terminal, tmp_path):
    terminal.expect("postgres=>")  # prompt_toolkit draws the trailing space as a cursor move
    terminal.send("SELECT 1 AS a,\r")
    terminal.expect("postgres->")
    terminal.send("  'two' AS b;\r")
    terminal.expect(" a |  b  \n---+-----\n 1 | two\n(1 row)\n")
    terminal.send("\\q\r")
    assert terminal.wait() == 0
    assert "SELECT 1 AS a," in (tmp_path / "history").read_text()


def test_interactive_errors_and_a_lost_connection_do_not_end_the_session(terminal):
    terminal.expect("postgres=>")  # prompt_toolkit draws the trailing space as a cursor move
    terminal.send("SELEC 1;\r")
    terminal.expect("(SQLSTATE 42601)")
    terminal.send("SELECT pg_terminate_backend(pg_backend_pid());\r")
    terminal.expect("connection to the server was lost")
    terminal.send("SELECT 6 * 7 AS answer;\r")
    terminal.expect("Reconnected to")
    terminal.expect("     42\n(1 row)\n")
    terminal.send("\\timing\r")
    terminal.expect("Timing is on.")
    terminal.send("SELECT 1;\r")
    terminal.expect("Time: ")
    terminal.expect("postgres=>")  # before the prompt the terminal is in cooked mode, where Ctrl-D is no key
    terminal.send("\x04")  # Ctrl-D on an empty line quits
    assert terminal.wait() == 0
