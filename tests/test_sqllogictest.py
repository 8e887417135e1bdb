"""The sqllogictest runner: the parser, the formatter and the judge as pure functions on hand-made
snippets (the rules of the corpus's ABOUT.wiki), then the real runner and `aurora-db sqllogictest`
against a scratch PostgreSQL 15 (tests/pg_oracle.py), which passes the corpus itself."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from aurora_db.sqllogictest import (
    HASH_THRESHOLD_DEFAULT,
    Action,
    Condition,
    ConditionKind,
    Halt,
    HashedResult,
    HashThreshold,
    Outcome,
    Query,
    RunReport,
    ScriptError,
    ScriptJudge,
    SortMode,
    Statement,
    applies_to,
    created_relation,
    drop_statements,
    format_report,
    format_value,
    hash_values,
    limit_records,
    parse_script,
    render_values,
    run_files,
    sort_values,
)

# Scripts of the public-domain sqllogictest corpus kept with the tests; SQLLOGICTEST_DIR may name
# a directory holding the whole corpus instead.
CORPUS_DIR = Path(os.environ.get("SQLLOGICTEST_DIR", Path(__file__).resolve().parent / "sqllogictest"))
SELECT1_RECORDS_CHECKED = 300


def script(text: str) -> list:
    return parse_script(textwrap.dedent(text).lstrip("\n"))


def only(text: str):
    records = script(text)
    assert len(records) == 1, records
    return records[0]


def md5_lines(values: list[str]) -> str:
    return hashlib.md5("".join(value + "\n" for value in values).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------

def test_statements_ok_and_error_with_multi_line_sql():
    records = script("""
        statement ok
        CREATE TABLE t1(a INTEGER,
                        b INTEGER)

        statement error
        INSERT INTO nowhere VALUES(1)
        """)
    assert records == [Statement(1, "CREATE TABLE t1(a INTEGER,\n                b INTEGER)", False),
                       Statement(5, "INSERT INTO nowhere VALUES(1)", True)]


def test_comment_lines_are_removed_and_do_not_separate_records():
    """ABOUT.wiki: comments are 'logically removed from the script by a preprocessor'."""
    record = only("""
        # a comment before the record
        query I nosort
        SELECT a
        # a comment in the middle of the SQL
          FROM t1
        ----
        1
        """)
    assert record.sql == "SELECT a\n  FROM t1"
    assert record.expected == ("1",)


def test_query_header_types_sort_mode_and_label():
    record = only("""
        query ITR rowsort label-xyzzy
        SELECT 1, 'a', 1.5
        ----
        1
        a
        1.500
        """)
    assert record == Query(1, "SELECT 1, 'a', 1.5", "ITR", SortMode.ROWSORT, "label-xyzzy", ("1", "a", "1.500"))


def test_query_defaults_to_nosort_and_no_rows_without_separator():
    record = only("""
        query I
        SELECT 1 WHERE false
        """)
    assert (record.sort_mode, record.label, record.expected) == (SortMode.NOSORT, None, ())


def test_hashed_expected_result():
    record = only("""
        query I valuesort
        SELECT a FROM t1
        ----
        30 values hashing to 3c13dee48d9356ae19af2515e05e6b54
        """)
    assert record.expected == HashedResult(30, "3c13dee48d9356ae19af2515e05e6b54")


def test_conditions_with_trailing_comments_and_control_records():
    records = script("""
        hash-threshold 3

        onlyif mssql # not here
        halt

        skipif postgresql
        onlyif sqlite
        statement ok
        SELECT 1
        """)
    assert records[0] == HashThreshold(1, 3)
    assert records[1] == Halt(4, (Condition(ConditionKind.ONLYIF, "mssql"),))
    assert records[2].conditions == (Condition(ConditionKind.SKIPIF, "postgresql"),
                                     Condition(ConditionKind.ONLYIF, "sqlite"))


def test_crlf_line_ends_are_accepted():
    records = parse_script("statement ok\r\nSELECT 1\r\n\r\nquery I nosort\r\nSELECT 1\r\n----\r\n1\r\n")
    assert records == [Statement(1, "SELECT 1", False), Query(4, "SELECT 1", "I", SortMode.NOSORT, None, ("1",))]


@pytest.mark.parametrize("text, message", [
    ("statement maybe\nSELECT 1\n", "statement ok"),
    ("statement ok\n", "without SQL"),
    ("query X nosort\nSELECT 1\n", "type string"),
    ("query I sideways\nSELECT 1\n", "sort mode"),
    ("query I nosort\n----\n1\n", "without SQL"),
    ("skipif mysql\n", "conditions without a record"),
    ("select 1\n", "unknown record"),
    ("hash-threshold many\n", "hash-threshold N"),
])
def test_malformed_records_are_typed_errors_with_their_line(text, message):
    with pytest.raises(ScriptError, match=message) as raised:
        parse_script("\n\n" + text, "bad.test")
    assert raised.value.path == "bad.test" and raised.value.line == 3


# ----------------------------------------------------------------------------------------------
# Formatting values, sorting, hashing
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, letter, shown", [
    (None, "I", "NULL"), (None, "T", "NULL"), (None, "R", "NULL"),
    ("", "T", "(empty)"), ("", "I", "(empty)"),
    ("42", "I", "42"), (42, "I", "42"), ("-7", "I", "-7"),
    ("12.9", "I", "12"), ("-12.9", "I", "-12"), (Decimal("3.5"), "I", "3"),     # truncated toward zero
    ("1", "R", "1.000"), ("2.5", "R", "2.500"), ("0.1236", "R", "0.124"), (Decimal("-1.0005"), "R", "-1.000"),
    ("1e+20", "R", "100000000000000000000.000"),
    ("abc", "T", "abc"), ("tab\there", "T", "tab@here"), ("café", "T", "caf@"),
    (True, "I", "1"), (False, "I", "0"),
    ("abc", "I", "abc"),                     # not a number: left readable, so the mismatch shows
])
def test_values_are_formatted_by_type_letter(value, letter, shown):
    assert format_value(value, letter) == shown


def test_rowsort_compares_rendered_text_so_9_sorts_after_10():
    rows = [["9", "b"], ["10", "z"], ["10", "a"]]
    assert sort_values(rows, SortMode.ROWSORT) == ["10", "a", "10", "z", "9", "b"]


def test_valuesort_ignores_row_groupings_and_nosort_keeps_order():
    rows = [["9", "b"], ["10", "a"]]
    assert sort_values(rows, SortMode.VALUESORT) == ["10", "9", "a", "b"]
    assert sort_values(rows, SortMode.NOSORT) == ["9", "b", "10", "a"]


def test_hash_is_md5_of_each_value_and_a_newline():
    assert hash_values(["1", "NULL"]) == hashlib.md5(b"1\nNULL\n").hexdigest()
    assert hash_values([]) == hashlib.md5(b"").hexdigest()


def test_values_are_hashed_only_above_the_threshold():
    eight, nine = [str(n) for n in range(8)], [str(n) for n in range(9)]
    assert HASH_THRESHOLD_DEFAULT == 8
    assert render_values(eight, HASH_THRESHOLD_DEFAULT) == eight
    assert render_values(nine, HASH_THRESHOLD_DEFAULT) == [f"9 values hashing to {md5_lines(nine)}"]
    assert render_values(nine, 0) == nine                  # 0: never hash


# ----------------------------------------------------------------------------------------------
# Judging records
# ----------------------------------------------------------------------------------------------

def outcome(*rows, columns=None) -> Outcome:
    return Outcome(None, columns if columns is not None else len(rows[0]) if rows else 1, tuple(rows))


def test_query_passes_when_the_sorted_rendered_values_match():
    query = only("""
        query IT rowsort
        SELECT a, b FROM t1
        ----
        1
        (empty)
        2
        NULL
        """)
    judge = ScriptJudge()
    assert judge.judge_query(query, outcome(("2", None), ("1", ""))).passed
    verdict = judge.judge_query(query, outcome(("2", None), ("3", "")))
    assert not verdict.passed and verdict.got == ("2", "NULL", "3", "(empty)")


def test_query_above_the_threshold_compares_hashes_and_hash_threshold_changes_it():
    values = [str(n) for n in range(10)]
    records = parse_script("query I valuesort\nSELECT n FROM t\n----\n"
                           f"10 values hashing to {md5_lines(sorted(values))}\n\n"
                           "hash-threshold 20\n\n"
                           "query I valuesort\nSELECT n FROM t\n----\n" + "\n".join(sorted(values)) + "\n")
    judge = ScriptJudge()
    rows = [(value,) for value in reversed(values)]
    assert judge.action(records[0]) is Action.RUN
    assert judge.judge_query(records[0], outcome(*rows)).passed
    assert judge.action(records[1]) is Action.CONTROL and judge.threshold == 20
    assert judge.judge_query(records[2], outcome(*rows)).passed


def test_real_values_with_three_decimals():
    query = only("""
        query R nosort
        SELECT avg(x) FROM t
        ----
        2.333
        """)
    assert ScriptJudge().judge_query(query, outcome((Decimal("2.3333333333333333"),))).passed


def test_wrong_column_count_and_server_errors_fail():
    query = only("""
        query II nosort
        SELECT 1, 2
        ----
        1
        2
        """)
    judge = ScriptJudge()
    assert judge.judge_query(query, outcome(("1",))).reason == "1 columns, expected 2"
    verdict = judge.judge_query(query, Outcome("syntax error"))
    assert not verdict.passed and verdict.got == ("error: syntax error",)


def test_statement_error_passes_only_when_the_server_refuses():
    ok, error = script("""
        statement ok
        CREATE TABLE t1(x INTEGER)

        statement error
        CREATE TABLE t1(x INTEGER)
        """)
    judge = ScriptJudge()
    assert judge.judge_statement(ok, Outcome()).passed
    assert not judge.judge_statement(ok, Outcome("relation exists")).passed
    assert judge.judge_statement(error, Outcome('relation "t1" already exists')).passed
    assert judge.judge_statement(error, Outcome()).reason == "statement succeeded, expected an error"


def test_skipif_and_onlyif_select_the_engine():
    """ABOUT.wiki: skipped if a skipif names the engine, or an onlyif names a different one."""
    skip_pg, only_sqlite, skip_mysql, only_pg = script("""
        skipif postgresql
        statement ok
        SELECT 1

        onlyif sqlite
        statement ok
        SELECT 1

        skipif mysql
        statement ok
        SELECT 1

        onlyif postgresql
        statement ok
        SELECT 1
        """)
    judge = ScriptJudge("postgresql")
    assert [judge.action(record) for record in (skip_pg, only_sqlite, skip_mysql, only_pg)] == \
        [Action.SKIP, Action.SKIP, Action.RUN, Action.RUN]
    assert applies_to(only_sqlite.conditions, "sqlite")


def test_halt_applies_only_under_its_conditions():
    other_engine, ours = script("""
        onlyif mssql
        halt

        halt
        """)
    judge = ScriptJudge()
    assert judge.action(other_engine) is Action.SKIP
    assert judge.action(ours) is Action.HALT


def test_queries_with_one_label_must_hash_alike():
    """ABOUT.wiki: 'If the label is reused, then sqllogictest verifies that the results are the same.'"""
    first, same, different = script("""
        query I rowsort label-1
        SELECT x FROM t1
        ----
        1

        query I rowsort label-1
        SELECT x FROM t1 WHERE true
        ----
        1

        query I rowsort label-1
        SELECT x + 1 FROM t1
        ----
        2
        """)
    judge = ScriptJudge()
    assert judge.judge_query(first, outcome(("1",))).passed
    assert judge.judge_query(same, outcome(("1",))).passed
    verdict = judge.judge_query(different, outcome(("2",)))     # matches its own result, not the label's
    assert not verdict.passed and "label-1" in verdict.reason


def test_a_skipped_labelled_query_still_records_its_expected_result():
    skipped, run = script("""
        onlyif sqlite
        query I nosort label-1
        SELECT 1 IN t1
        ----
        0

        query I nosort label-1
        SELECT 1 IN (SELECT * FROM t1)
        ----
        1
        """)
    judge = ScriptJudge()
    assert judge.action(skipped) is Action.SKIP and judge.note_skipped(skipped) is None
    verdict = judge.judge_query(run, outcome(("1",)))
    assert not verdict.passed and "label-1" in verdict.reason


# ----------------------------------------------------------------------------------------------
# Cleanup and limits
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sql, created", [
    ("CREATE TABLE t1(a INTEGER)", ("TABLE", "t1")),
    ("create temp table if not exists T2 (a int)", ("TABLE", "T2")),
    ("CREATE VIEW view1 AS SELECT 1", ("VIEW", "view1")),
    ('CREATE TABLE "Odd Name"(a int)', ("TABLE", '"Odd Name"')),
    ("CREATE INDEX t1i1 ON t1(a)", None),
    ("INSERT INTO t1 VALUES(1)", None),
])
def test_created_relations_are_recognized(sql, created):
    assert created_relation(sql) == created


def test_views_are_dropped_before_tables_newest_first_once_each():
    created = [("TABLE", "t1"), ("VIEW", "v1"), ("TABLE", "t2"), ("VIEW", "v2"), ("TABLE", "t1")]
    assert drop_statements(created) == ["DROP VIEW IF EXISTS v2", "DROP VIEW IF EXISTS v1",
                                        "DROP TABLE IF EXISTS t1", "DROP TABLE IF EXISTS t2"]


def test_record_limit_counts_statements_and_queries_only():
    records = script("""
        hash-threshold 4

        statement ok
        SELECT 1

        query I nosort
        SELECT 1
        ----
        1

        statement ok
        SELECT 2
        """)
    assert limit_records(records, 2) == records[:3]
    assert limit_records(records, None) == records


# ----------------------------------------------------------------------------------------------
# Against PostgreSQL 15
# ----------------------------------------------------------------------------------------------

SNIPPET = """\
hash-threshold 10

statement ok
CREATE TABLE slt_snippet(a INTEGER, b VARCHAR(30), c REAL)

statement ok
INSERT INTO slt_snippet VALUES(1, 'x', 1.25), (2, '', NULL), (10, NULL, 2.5)

query ITR rowsort
SELECT a, b, c FROM slt_snippet
----
1
x
1.250
10
NULL
2.500
2
(empty)
NULL

statement error
SELECT nothing FROM slt_snippet

skipif postgresql
statement ok
THIS IS NOT SQL

query R nosort
SELECT avg(a) FROM slt_snippet
----
4.333

statement ok
CREATE VIEW slt_snippet_view AS SELECT a FROM slt_snippet
"""


def conninfo(server) -> dict:
    return {"host": server.host, "port": server.port, "user": server.user, "dbname": server.dbname}


def relations(server, like: str) -> list[str]:
    rows = server.execute(f"SELECT table_name FROM information_schema.tables WHERE table_name LIKE '{like}'")
    return [row[0] for row in rows]


def test_select1_prefix_passes_on_postgresql(postgres_server):
    """PostgreSQL 15 passes the corpus: the runner's parsing, formatting and hashing agree with it."""
    path = CORPUS_DIR / "select1.test"
    assert path.exists(), f"the vendored corpus file {path} is missing"
    report = run_files([str(path)], conninfo(postgres_server), record_limit=SELECT1_RECORDS_CHECKED)
    assert report.failures == [], format_report(report)
    (file,) = report.files
    assert (file.passed, file.failed, file.skipped) == (SELECT1_RECORDS_CHECKED, 0, 0)
    assert relations(postgres_server, "t1") == []                # the file's table is dropped at the end


def test_snippet_passes_skips_and_cleans_up(postgres_server, tmp_path):
    path = tmp_path / "snippet.test"
    path.write_text(SNIPPET)
    report = run_files([str(path)], conninfo(postgres_server))
    assert report.failures == [], format_report(report)
    assert (report.files[0].passed, report.files[0].skipped) == (6, 1)
    assert relations(postgres_server, "slt_snippet%") == []
    again = run_files([str(path)], conninfo(postgres_server))  # files can run one after another
    assert again.ok()


def test_a_lost_connection_fails_one_record_and_the_run_goes_on(postgres_server, tmp_path):
    path = tmp_path / "lost.test"
    path.write_text("statement ok\nSELECT pg_terminate_backend(pg_backend_pid())\n\n"
                    "query I nosort\nSELECT 1\n----\n1\n")
    report = run_files([str(path)], conninfo(postgres_server))
    assert (report.files[0].passed, report.files[0].failed) == (1, 1)
    assert report.failures[0].got[0].startswith("error: connection lost")


def test_a_statement_that_never_returns_times_out(postgres_server, tmp_path):
    path = tmp_path / "slow.test"
    path.write_text("statement ok\nSELECT pg_sleep(30)\n\nquery I nosort\nSELECT 2\n----\n2\n")
    report = run_files([str(path)], conninfo(postgres_server), statement_timeout_s=0.5)
    assert (report.files[0].passed, report.files[0].failed) == (1, 1)
    assert "timed out after 0.5 s" in report.failures[0].got[0]


def cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aurora_db.cli", "sqllogictest", *arguments],
                          capture_output=True, text=True, timeout=120)


def test_cli_exit_status_counts_and_first_failures(postgres_server, tmp_path):
    good, bad = tmp_path / "good.test", tmp_path / "bad.test"
    good.write_text(SNIPPET)
    bad.write_text("query I nosort\nSELECT 1\n----\n2\n\nquery T nosort\nSELECT 'a'\n----\nb\n")
    where = ["--host", postgres_server.host, "--port", str(postgres_server.port), "--user", postgres_server.user,
             "--dbname", postgres_server.dbname]

    passed = cli(str(good), *where)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert f"{good}: 6 passed, 0 failed, 1 skipped" in passed.stdout

    failed = cli(str(good), str(bad), *where, "--failures", "1")
    assert failed.returncode == 1
    assert f"{bad}: 0 passed, 2 failed, 0 skipped" in failed.stdout
    assert "total: 6 passed, 2 failed, 1 skipped" in failed.stdout
    assert f"FAIL {bad}:1: wrong result" in failed.stdout and f"{bad}:6" not in failed.stdout

    as_json = json.loads(cli(str(bad), *where, "--json").stdout)
    assert as_json["total"]["failed"] == 2
    assert [(f["line"], f["expected"], f["got"]) for f in as_json["failures"]] == [(1, ["2"], ["1"]),
                                                                                  (6, ["b"], ["a"])]


def test_cli_reports_a_malformed_script(tmp_path):
    path = tmp_path / "broken.test"
    path.write_text("statement perhaps\nSELECT 1\n")
    result = cli(str(path), "--port", "1")
    assert result.returncode == 1 and f"{path}:1: expected 'statement ok'" in result.stderr


def test_run_report_is_ok_only_without_failures():
    assert RunReport().ok()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["select1.test", "select2.test"])
def test_the_corpus_passes_on_our_cluster(sql_cluster, name):
    """Issue 3: every record not skipped for postgresql passes on our own cluster, as on PostgreSQL."""
    path = CORPUS_DIR / name
    assert path.exists(), f"the vendored corpus file {path} is missing"
    report = run_files([str(path)], conninfo(sql_cluster))
    assert report.failures == [], format_report(report)
    (file,) = report.files
    assert file.failed == 0 and file.passed > 1000
