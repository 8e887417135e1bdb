"""Plans cached by statement shape (compute_node/plan_cache.py): statements that differ only in
literal values share one parse and plan, and still answer exactly as PostgreSQL 15 does, also
where a literal's value is part of the meaning (ordinals, LIMIT, type modifiers, typed literals)."""

from __future__ import annotations

import psycopg
import pytest

from compute_node.plan_cache import PlanCache, shape_of
from tests.admin import writer_status


def test_statements_differing_only_in_literal_values_share_a_shape():
    first = shape_of("UPDATE t SET v = v + 5 WHERE id = 7 AND name = 'a'")
    second = shape_of("UPDATE t SET v = v + 123 WHERE id = 99 AND name = 'it''s'")
    assert first.key == second.key
    assert [text for _, _, text in second.literals] == ["123", "99", "it's"]
    assert second.kinds == ("int4", "int4", "unknown")


def test_a_literals_kind_is_part_of_the_shape_as_postgresql_types_it():
    kinds = [shape_of(f"SELECT {literal}").kinds for literal in ("1", "3000000000", "99999999999999999999")]
    assert kinds == [("int4",), ("int8",), ("numeric",)]
    # A decimal's type follows its context (float8 beside a float): it stays in the shape.
    assert shape_of("SELECT 1.5, 2").kinds == ("int4",)
    assert shape_of("SELECT 1.5, 2").key != shape_of("SELECT 1.25, 2").key


def test_statements_that_are_not_reshaped():
    assert shape_of("SELECT * FROM t WHERE id = $1") is None  # parameters of its own
    assert shape_of("CREATE TABLE t (a varchar(20))") is None
    assert shape_of("SELECT a FROM t") is None  # no literal
    assert shape_of("SELECT 1e5") is None  # an exponent number stays as written: no literal left
    assert shape_of("SELECT 1e5, 2").kinds == ("int4",)


def _pinned(sql):
    import sqlglot
    cache = PlanCache()
    parse = lambda text: sqlglot.parse_one(text, read="postgres")
    plan = lambda node, kinds: (object(), list(kinds))
    entry, values = cache.lookup(sql, parse, plan, lambda _: True)
    return values, entry.node.sql(dialect="postgres")


@pytest.mark.parametrize("sql, bound, kept", [
    ("SELECT a, b FROM t WHERE a > 5 ORDER BY 2, 1", ["5"], ["ORDER BY 2, 1"]),
    ("SELECT a, count(*) FROM t WHERE b = 'x' GROUP BY 1", ["x"], ["GROUP BY 1"]),
    ("SELECT a FROM t WHERE a = 3 LIMIT 10 OFFSET 20", ["3"], ["LIMIT 10", "OFFSET 20"]),
    ("SELECT CAST(a AS VARCHAR(20)) FROM t WHERE a = 1", ["1"], ["VARCHAR(20)"]),
    ("SELECT DATE '2020-01-02' FROM t WHERE a = 1", ["1"], ["2020-01-02"]),
])
def test_literals_that_carry_meaning_stay_in_the_template(sql, bound, kept):
    values, template = _pinned(sql)
    assert values == bound
    for text in kept:
        assert text in template, template


STATEMENTS = [  # each run with two sets of literals: the second reuses the first's plan
    ("SELECT {0} + 1, {1} * 2, 'x' || {2}", [("1", "2", "'a'"), ("10", "3.5", "'b'")]),
    ("SELECT x = {0}, x > {0}, x IN ({0}, {1}) FROM (SELECT '0.1'::float8 AS x) s", [("0.1", "0.2"), ("0.3", "0.1")]),
    ("SELECT count(*) FROM (SELECT '0.3'::float8 AS x) s WHERE x = {0}", [("0.3",), ("0.30",)]),
    ("SELECT {0}", [("'text'",), ("'more'",)]),
    ("SELECT {0}", [("3000000000",), ("3000000001",)]),
    ("SELECT {0}::int + 1", [("'41'",), ("'9'",)]),
    ("SELECT {0} / {1}, {0} % {1}", [("7", "2"), ("-9", "4")]),
    ("SELECT id, name FROM {{t}} WHERE id > {0} ORDER BY {1} DESC LIMIT {2}", [("1", "1", "2"), ("2", "2", "3")]),
    ("SELECT name, count(*) FROM {{t}} WHERE id < {0} GROUP BY {1} ORDER BY 1", [("10", "1"), ("4", "1")]),
    ("SELECT CAST(name AS varchar({0})) FROM {{t}} WHERE id = {1}", [("2", "1"), ("4", "2")]),
    ("SELECT id FROM {{t}} WHERE name LIKE {0} ORDER BY id", [("'%a'",), ("'b%'",)]),
    ("SELECT id FROM {{t}} WHERE id IN ({0}, {1}) AND name <> {2} ORDER BY id", [("1", "2", "'x'"), ("3", "4", "'gamma'")]),
    ("SELECT CASE WHEN id = {0} THEN {1} ELSE {2} END FROM {{t}} ORDER BY id", [("1", "'one'", "'other'"), ("2", "2", "3")]),
]


@pytest.mark.parametrize("simple_protocol", [True, False], ids=["simple", "extended"])
def test_cached_templates_answer_like_postgresql(sql_cluster, postgres_server, simple_protocol):
    table = f"shapes_{'simple' if simple_protocol else 'extended'}"
    connections = []
    for server in (sql_cluster, postgres_server):
        connection = psycopg.connect(server.url, autocommit=True,
                                     cursor_factory=psycopg.ClientCursor if simple_protocol else psycopg.Cursor)
        connection.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL)")
        connection.execute(f"INSERT INTO {table} VALUES (1, 'alpha'), (2, 'beta'), (3, 'gamma'), (4, 'delta')")
        connections.append(connection)
    hits_before = writer_status(sql_cluster.port + 20)["plan_cache_hits"]
    try:
        for pattern, literal_sets in STATEMENTS:
            for literals in literal_sets:
                sql = pattern.format(*literals).format(t=table)
                answers = []
                for connection in connections:
                    cursor = connection.execute(sql)
                    answers.append((cursor.fetchall(), [column.type_code for column in cursor.description]))
                assert answers[0] == answers[1], sql
        errors = []
        for connection in connections:
            with pytest.raises(psycopg.Error) as caught:
                connection.execute(f"SELECT id FROM {table} WHERE id = 'not a number'")
            errors.append(caught.value.sqlstate)
        assert errors[0] == errors[1] == "22P02"
    finally:
        for connection in connections:
            connection.execute(f"DROP TABLE {table}")
            connection.close()
    assert writer_status(sql_cluster.port + 20)["plan_cache_hits"] > hits_before


def test_a_prepared_template_whose_table_changed_is_prepared_again_from_its_text(sql_cluster, postgres_server):
    """The literal '007' was typed as text for a text column; after the table is made again with an
    int column, the statement must run as written would: '007' is now the integer 7."""
    answers = []
    for server in (sql_cluster, postgres_server):
        with psycopg.connect(server.url, autocommit=True) as session, \
                psycopg.connect(server.url, autocommit=True) as other:
            other.execute("DROP TABLE IF EXISTS shapes_stale")
            other.execute("CREATE TABLE shapes_stale (c text)")
            other.execute("INSERT INTO shapes_stale VALUES ('007'), ('7')")
            query = "SELECT count(*) FROM shapes_stale WHERE c = '007'"
            first = session.execute(query, prepare=True).fetchone()
            other.execute("DROP TABLE shapes_stale")
            other.execute("CREATE TABLE shapes_stale (c int)")
            other.execute("INSERT INTO shapes_stale VALUES (7), (7), (8)")
            answers.append((first, session.execute(query, prepare=True).fetchone()))
            other.execute("DROP TABLE shapes_stale")
    assert answers[0] == answers[1] == [((1,), (2,))][0]


def test_a_template_made_stale_inside_a_repeatable_read_transaction_runs_as_written(sql_cluster):
    """Another session adds a column after this transaction's snapshot: the shape's cached plan
    (made from the newest catalog) does not fit this snapshot, and the statement still runs."""
    with psycopg.connect(sql_cluster.url, autocommit=True) as session, \
            psycopg.connect(sql_cluster.url, autocommit=True) as other:
        other.execute("CREATE TABLE shapes_rr (id int PRIMARY KEY, v text)")
        other.execute("INSERT INTO shapes_rr VALUES (1, 'one'), (2, 'two')")
        session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert session.execute("SELECT v FROM shapes_rr WHERE id = 1").fetchone() == ("one",)
        other.execute("ALTER TABLE shapes_rr ADD COLUMN w int")
        assert other.execute("SELECT v FROM shapes_rr WHERE id = 2").fetchone() == ("two",)  # cached anew
        assert session.execute("SELECT v FROM shapes_rr WHERE id = 2").fetchone() == ("two",)
        assert session.execute("SELECT count(*) FROM shapes_rr WHERE id > 0").fetchone() == (2,)
        session.execute("COMMIT")
        other.execute("DROP TABLE shapes_rr")


def test_a_prepared_statement_whose_result_columns_changed_fails_with_0A000(sql_cluster, postgres_server):
    """A prepared statement's row description was sent when it was described: after ALTER TABLE
    adds a column, `SELECT *` would return other columns, so PostgreSQL refuses to run it
    ("cached plan must not change result type") and nothing happens; a plan that still gives
    the same columns runs."""
    outcomes = []
    for server in (sql_cluster, postgres_server):
        with psycopg.connect(server.url, autocommit=True) as session, \
                psycopg.connect(server.url, autocommit=True) as other:
            other.execute("DROP TABLE IF EXISTS result_shape")
            other.execute("CREATE TABLE result_shape (id int PRIMARY KEY, v text)")
            other.execute("INSERT INTO result_shape VALUES (1, 'a')")
            star = "SELECT * FROM result_shape WHERE id = %s"
            named = "SELECT v FROM result_shape WHERE id = %s"
            returning = "UPDATE result_shape SET v = v || 'x' WHERE id = %s RETURNING *"
            first = [session.execute(sql, (1,), prepare=True).fetchall() for sql in (star, named, returning)]
            other.execute("ALTER TABLE result_shape ADD COLUMN w int DEFAULT 5")
            outcome = [first]
            for sql in (star, named, returning):
                try:
                    outcome.append(session.execute(sql, (1,), prepare=True).fetchall())
                except psycopg.Error as error:
                    outcome.append((error.sqlstate, str(error).splitlines()[0]))
            outcome.append(other.execute("SELECT * FROM result_shape").fetchall())
            outcomes.append(outcome)
            other.execute("DROP TABLE result_shape")
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][1][0] == "0A000"
