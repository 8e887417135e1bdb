"""NUMERIC[(p,s)], DATE, TIMESTAMP, TIMESTAMPTZ and CHAR(n), checked against PostgreSQL 15: the same
statements on both servers give the same rows (psycopg decodes by type OID, so the types must match
too), the same command tags and the same SQLSTATEs. Also: these values survive the trip through
pages and storage (primary keys and indexes on them sort correctly), COPY text input, binary
results, and now() is one value per transaction."""

from __future__ import annotations

import datetime
import decimal

import psycopg
import pytest

from tests.test_sql_schema import both, run_script  # noqa: F401 (both is a fixture)

NUMERIC = """
SELECT 1.50::numeric(10,2) AS a, 1.5::numeric AS b, '2.345'::numeric(5,2) AS c, '-2.345'::numeric(5,2) AS d
SELECT 1.10 + 2.205 AS s, 1.10 * 2.205 AS m, 1.10 - 2.205 AS d, 7::numeric / 3 AS q, 1::numeric / 3.00 AS r
SELECT 10.0 / 4 AS a, 2::numeric / 7 AS b, 100000::numeric / 3 AS c, 0.0001::numeric / 3 AS d, 1 / 0.5 AS e
SELECT 12345.678::numeric(10,2) AS a, 0.005::numeric(3,2) AS b, -0.005::numeric(3,2) AS c
SELECT 1000::numeric(5,2)
SELECT 'abc'::numeric
SELECT 1::numeric / 0
SELECT 5.5::numeric % 2 AS a, -5.5 % 2 AS b, abs(-1.25) AS c, -(1.25) AS d
SELECT 3.7::numeric::int AS a, 2.5::numeric::int AS b, 1.25::numeric::float8 AS c, 7::numeric(6,3) AS d
SELECT 1.5::numeric::text AS a, 1.50::numeric(4,2)::varchar AS b
SELECT '1_000'::numeric
SELECT 1.5 + 2::float8 AS a, 0.1::numeric * 3::float8 AS b, 2::float4 - 0.5 AS c
SELECT 0.1::numeric IN (0.1::float8) AS a, 0.1::numeric IN (0.2, 0.1::float8) AS b, 0.1::numeric BETWEEN 0.1::float8 AND 1 AS c
SELECT NULLIF(0.1::numeric, 0.1::float8) AS a, NULLIF(0.2::numeric, 0.1::float8) AS b, 0.1::numeric IS DISTINCT FROM 0.1::float8 AS c
SELECT CASE 0.1::numeric WHEN 0.1::float8 THEN 'eq' ELSE 'ne' END AS a, CASE 0.1::float8 WHEN 0.3 THEN 'x' WHEN 0.1 THEN 'y' END AS b
SELECT 0.1::numeric = ANY(ARRAY[0.1::float8]) AS a, 0.1::float8 = ANY(ARRAY[0.3, 0.1]) AS b, 0.2::numeric < ANY(ARRAY[0.1::float8]) AS c
SELECT ' 12.340 '::numeric AS a, '1e3'::numeric AS b, 123.456::numeric(5,0) AS c
CREATE TABLE {p}money (id numeric(6,1) PRIMARY KEY, amount numeric(10,2) NOT NULL, ratio decimal)
INSERT INTO {p}money VALUES (2.06, 10, 1.5), (1, 2.345, 0.333), (-3.3, 99999999.99, NULL)
INSERT INTO {p}money VALUES (4, 100000000, 1)
INSERT INTO {p}money VALUES (5, 'x', 1)
INSERT INTO {p}money VALUES (2.1, 1, 1)
SELECT id, amount, ratio FROM {p}money ORDER BY id
SELECT id, amount FROM {p}money WHERE id = 2.1
SELECT id FROM {p}money WHERE amount > 5 ORDER BY amount DESC
SELECT sum(amount) AS s, min(amount) AS mn, max(amount) AS mx, avg(ratio) AS a, count(ratio) AS c FROM {p}money
SELECT amount * 2 AS a, amount + ratio AS b, amount / 3 AS c FROM {p}money WHERE ratio IS NOT NULL ORDER BY id
UPDATE {p}money SET amount = amount * 1.005 WHERE id = 1
SELECT id, amount FROM {p}money ORDER BY amount
"""

DATES = """
SELECT '2024-01-02'::date AS a, DATE '1999-12-31' AS b, date '2024-02-29' + 1 AS c, '2024-03-01'::date - 1 AS d
SELECT '2024-03-01'::date - '2024-01-01'::date AS diff, 30 + DATE '2024-01-31' AS e
SELECT '2024-13-01'::date
SELECT '2023-02-29'::date
SELECT 'not a date'::date
SELECT '2024-01-02 03:04:05'::date AS a, '2024-01-02'::date::text AS b, '2024-01-02'::date::timestamp AS c
SELECT 5::date
CREATE TABLE {p}days (d date PRIMARY KEY, n int)
INSERT INTO {p}days VALUES ('2024-01-10', 1), ('1999-12-31', 2), ('2000-01-01', 3), ('2024-01-09', 4)
INSERT INTO {p}days VALUES ('2024-01-10', 5)
INSERT INTO {p}days VALUES ('2024-02-30', 6)
SELECT d, n FROM {p}days ORDER BY d
SELECT d, n FROM {p}days WHERE d = '2024-01-09'
SELECT d FROM {p}days WHERE d > '2000-01-01' ORDER BY d DESC
SELECT min(d) AS a, max(d) AS b, count(*) AS c FROM {p}days
SELECT d + 7 AS w FROM {p}days WHERE d BETWEEN '2000-01-01' AND '2024-01-09' ORDER BY 1
SELECT d < '2024-01-10 00:00:01'::timestamp AS lt FROM {p}days ORDER BY d
SELECT d || '' AS t FROM {p}days ORDER BY d LIMIT 1
"""

TIMESTAMPS = """
SELECT '2024-01-02 03:04:05.123456'::timestamp AS a, TIMESTAMP '2024-01-02 03:04:05.5' AS b, '2024-01-02'::timestamp AS c
SELECT '2024-01-02T03:04:05'::timestamp AS a, '2024-01-02 03:04:05.1234567'::timestamp AS b
SELECT '2024-01-02 03:04:05+02'::timestamptz AS a, '2024-01-02 03:04:05'::timestamptz AS b, '2024-01-02 03:04:05-07:30'::timestamptz AS c
SELECT '2024-01-02 03:04:05+02'::timestamp AS a, '2024-01-02 03:04:05.25'::timestamptz::text AS b
SELECT '2024-01-02 25:00:00'::timestamp
SELECT '2024-01-02 03:04:xx'::timestamp
SELECT '2024-01-02 03:04:05'::timestamp::date AS a, '2024-01-02 03:04:05'::timestamptz::timestamp AS b
CREATE TABLE {p}events (at timestamp PRIMARY KEY, tz timestamptz, label text)
CREATE INDEX {p}events_tz ON {p}events (tz)
INSERT INTO {p}events VALUES ('2024-01-02 03:04:05.5', '2024-01-02 03:04:05+01', 'a'), ('2023-12-31 23:59:59', '2024-01-01 00:00:00+00', 'b')
INSERT INTO {p}events VALUES ('2024-01-02 03:04:05.000001', '2020-06-01 12:00:00-05', 'c')
INSERT INTO {p}events VALUES ('2024-01-02 03:04:05.5', NULL, 'dup')
SELECT at, tz, label FROM {p}events ORDER BY at
SELECT label FROM {p}events ORDER BY tz DESC
SELECT label FROM {p}events WHERE tz > '2023-06-01' ORDER BY label
SELECT label FROM {p}events WHERE at >= '2024-01-02' ORDER BY at
SELECT min(at) AS a, max(tz) AS b FROM {p}events
SELECT label FROM {p}events WHERE at = '2024-01-02 03:04:05.5'
"""

CHARS = """
SELECT 'ab'::char(4) AS a, 'abc'::char AS b, 'ab  '::char(2) AS c, 'abcdef'::char(3) AS d
SELECT 'ab'::char(4) = 'ab' AS a, 'ab'::char(4) = 'ab  '::char(2) AS b, 'ab'::char(4) || 'x' AS c, length('ab'::char(4)) AS d
SELECT 'ab'::char(4)::text AS a, 'ab'::char(4)::varchar AS b
CREATE TABLE {p}codes (code char(4) PRIMARY KEY, filler char(22), v varchar(10))
INSERT INTO {p}codes VALUES ('b', 'x', 'v'), ('a', NULL, 'w'), ('ab', 'yy', 'z')
INSERT INTO {p}codes VALUES ('abcde', 'x', 'v')
INSERT INTO {p}codes VALUES ('abcd   ', 'x', 'v')
SELECT code, filler, v FROM {p}codes ORDER BY code
SELECT code FROM {p}codes WHERE filler = 'x'
SELECT count(*) AS c FROM {p}codes WHERE code > 'a'
SELECT code, v FROM {p}codes WHERE code = 'a'
SELECT code, v FROM {p}codes WHERE code = 'ab  '
SELECT code FROM {p}codes WHERE code IN ('a', 'b ') ORDER BY code
UPDATE {p}codes SET filler = 'z' WHERE code = 'b'
SELECT code, filler FROM {p}codes WHERE filler = 'z'
"""

PGBENCH_TABLES = """
CREATE TABLE {p}history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))
CREATE TABLE {p}tellers (tid int NOT NULL, bid int, tbalance int, filler char(84)) WITH (fillfactor=100)
CREATE TABLE {p}accounts (aid int NOT NULL, bid int, abalance int, filler char(84)) WITH (fillfactor=100)
CREATE TABLE {p}branches (bid int NOT NULL, bbalance int, filler char(88)) WITH (fillfactor=100)
INSERT INTO {p}tellers (tid, bid, tbalance) VALUES (1, 1, 0)
INSERT INTO {p}history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 5, '2024-01-02 03:04:05')
SELECT tid, bid, aid, delta, mtime, filler FROM {p}history
SELECT tid, filler FROM {p}tellers
"""

UNSUPPORTED = """
CREATE TABLE {p}bad (a numeric(0))
CREATE TABLE {p}bad (a char(0))
SELECT 1::int2::date
SELECT '2024-01-01'::date + 1.5
SELECT true::date
"""


@pytest.mark.parametrize("script", [NUMERIC, DATES, TIMESTAMPS, CHARS, PGBENCH_TABLES, UNSUPPORTED],
                         ids=["numeric", "dates", "timestamps", "chars", "pgbench_tables", "errors"])
def test_type_scripts_match_postgresql(both, script):
    ours, theirs, prefix = both
    for connection in (ours, theirs):
        connection.execute("SET TimeZone = 'UTC'")
    run_script(ours, theirs, script, prefix)


def test_interval_arithmetic_is_0A000(sql_cluster):
    """timestamp - timestamp and timestamp + interval need the interval type, which we lack."""
    with sql_cluster.connect() as connection:
        for sql in ("SELECT now() - now()", "SELECT LOCALTIMESTAMP - LOCALTIMESTAMP"):
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                connection.execute(sql)


def test_binary_results_match_postgresql(both):
    """psycopg's binary format goes through pgwire's numeric, date and timestamp encoders."""
    ours, theirs, _ = both
    sql = ("SELECT 1.50::numeric(10,2) AS n, -0.000123::numeric AS m, '2024-01-02'::date AS d, "
           "'1999-12-31 23:59:59.25'::timestamp AS ts, '2024-01-02 03:04:05+02'::timestamptz AS tz, "
           "'ab'::char(4) AS c")
    mine = ours.cursor(binary=True).execute(sql).fetchall()
    assert mine == theirs.cursor(binary=True).execute(sql).fetchall()
    assert mine[0][0] == decimal.Decimal("1.50") and str(mine[0][0]) == "1.50"


def test_parameters_of_the_new_types_round_trip(sql_cluster):
    with sql_cluster.connect() as connection:
        connection.execute(
            "CREATE TABLE typed_params (d date, ts timestamp, tz timestamptz, n numeric(8,3), c char(3))")
        row = (datetime.date(2024, 1, 2), datetime.datetime(2024, 1, 2, 3, 4, 5, 600),
               datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), decimal.Decimal("1.2345"), "x")
        connection.execute("INSERT INTO typed_params VALUES (%s, %s, %s, %s, %s)", row)
        got = connection.execute("SELECT d, ts, tz, n, c FROM typed_params WHERE d = %s", (row[0],)).fetchall()
        assert got == [(*row[:3], decimal.Decimal("1.235"), "x  ")]


def test_copy_text_input_of_the_new_types(sql_cluster):
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE copied_types (id int, d date, ts timestamp, n numeric(6,2), c char(5))")
        with connection.cursor().copy("COPY copied_types FROM STDIN") as copy:
            copy.write("1\t2024-01-02\t2024-01-02 03:04:05.5\t1.005\tab\n2\t\\N\t\\N\t\\N\t\\N\n")
        rows = connection.execute("SELECT id, d, ts, n, c FROM copied_types ORDER BY id").fetchall()
        assert rows == [(1, datetime.date(2024, 1, 2), datetime.datetime(2024, 1, 2, 3, 4, 5, 500000),
                         decimal.Decimal("1.01"), "ab   "), (2, None, None, None, None)]
        with pytest.raises(psycopg.errors.DatetimeFieldOverflow):
            with connection.cursor().copy("COPY copied_types (id, d) FROM STDIN") as copy:
                copy.write("3\t2024-02-30\n")


def test_now_is_one_value_per_transaction(sql_cluster):
    """PostgreSQL: now() and CURRENT_TIMESTAMP give the start time of the current transaction."""
    with sql_cluster.connect() as connection:
        with connection.transaction():
            first = connection.execute("SELECT now(), CURRENT_TIMESTAMP, CURRENT_DATE, LOCALTIMESTAMP").fetchone()
            second = connection.execute("SELECT now()").fetchone()
        assert first[0] == first[1] == second[0]
        assert first[2] == first[0].date() and first[3] == first[0].replace(tzinfo=None)
        later = connection.execute("SELECT now()").fetchone()
        assert later[0] > first[0]
        assert abs(later[0] - datetime.datetime.now(datetime.timezone.utc)) < datetime.timedelta(minutes=1)


def test_now_in_defaults_and_values_is_the_transactions_start(sql_cluster):
    """now() in a DEFAULT, in INSERT ... VALUES, in UPDATE's SET and WHERE and in RETURNING is the
    same instant as SELECT now() in that transaction, in every statement of it."""
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE stamped (id int PRIMARY KEY, at timestamptz DEFAULT now(), v timestamptz)")
        with connection.transaction():
            started = connection.execute("SELECT now()").fetchone()[0]
            connection.execute("INSERT INTO stamped (id, v) VALUES (1, CURRENT_TIMESTAMP)")
            connection.execute("INSERT INTO stamped (id, v) VALUES (2, now())")
        rows = connection.execute("SELECT at, v FROM stamped ORDER BY id").fetchall()
        assert rows == [(started, started), (started, started)]
        with connection.transaction():
            started = connection.execute("SELECT now()").fetchone()[0]
            updated = connection.execute("UPDATE stamped SET v = now() WHERE at < now() RETURNING v, now()").fetchall()
            deleted = connection.execute("DELETE FROM stamped WHERE id = 2 RETURNING now()").fetchall()
            inserted = connection.execute("INSERT INTO stamped (id) VALUES (3) RETURNING at, now()").fetchall()
        assert updated == [(started, started)] * 2 and deleted == [(started,)] and inserted == [(started, started)]
        connection.execute("DROP TABLE stamped")


def test_keys_of_the_new_types_sort_after_pages_travel_to_storage(sql_cluster):
    """B-tree keys are the Python values themselves; pages crossing msgpack keep them comparable.
    Enough rows to split pages, read back through a 64-page cache."""
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE many_keys (n numeric(12,3) PRIMARY KEY, d date, c char(30))")
        connection.execute("CREATE INDEX many_keys_d ON many_keys (d)")
        values = [(decimal.Decimal(i * 7 % 1009) / 8, datetime.date(2000, 1, 1) + datetime.timedelta(days=i * 13 % 997),
                   f"k{i}") for i in range(1009)]
        with connection.cursor().copy("COPY many_keys FROM STDIN") as copy:
            for n, d, c in values:
                copy.write_row((n, d, c))
        got = [row[0] for row in connection.execute("SELECT n FROM many_keys ORDER BY n").fetchall()]
        assert got == sorted(n.quantize(decimal.Decimal("0.001")) for n, _, _ in values)
        assert connection.execute("SELECT c FROM many_keys WHERE n = 3.5").fetchall() == [("k4" + " " * 28,)]
        probe = values[500]
        assert connection.execute("SELECT count(*) FROM many_keys WHERE d = %s", (probe[1],)).fetchone()[0] >= 1
