"""psql 15's meta-commands against our server, checked against PostgreSQL 15: \\l, \\dn, \\dt, \\dv, \\d, \\di
and \\d of tables, views and indexes print exactly what they print against PostgreSQL for the same
schema.

psql sends its own catalog queries (shared/reference/psql15_catalog_queries.txt), so this checks
that the engine runs them: pg_catalog's tables, the catalog functions, regular expressions, and
PostgreSQL's display of types, defaults and index definitions. Both servers are shared with other
tests, whose tables would show in the listings: a listing runs in a transaction that first drops
every relation not made here, then rolls back, so both servers list the same relations and nothing
is lost.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

PSQL_TIMEOUT_S = 30
PREFIX = "psql_"

SCHEMA = [
    "CREATE TABLE psql_accounts (id serial PRIMARY KEY, email varchar(80) UNIQUE, owner text NOT NULL, "
    "balance numeric(12,2) DEFAULT 0, opened date DEFAULT CURRENT_DATE, status char(1) DEFAULT 'a', "
    "note varchar(20) DEFAULT 'n/' || 'a')",
    "CREATE INDEX psql_accounts_owner ON psql_accounts (owner, opened)",
    "CREATE TABLE psql_events (account int NOT NULL, seq bigint NOT NULL, kind text DEFAULT 'deposit', "
    "amount double precision, at timestamptz DEFAULT now(), PRIMARY KEY (account, seq))",
    "CREATE UNIQUE INDEX psql_events_kind ON psql_events (kind, seq)",
    "CREATE TABLE psql_ids (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, flag boolean NOT NULL DEFAULT true, "
    "qty smallint DEFAULT -1, ratio real DEFAULT 1.5, big bigint DEFAULT 1 + 2)",
    'CREATE TABLE psql_plain (a int, "Order" text, b numeric)',
    'CREATE INDEX psql_plain_order ON psql_plain ("Order")',
    "CREATE VIEW psql_rich (id, who, balance) AS SELECT id, email, balance FROM psql_accounts WHERE balance > 100",
    'CREATE VIEW psql_feed AS SELECT e.*, a.owner, a.status FROM psql_events e JOIN psql_accounts a ON a.id = e.account',
]
TABLES = ["psql_accounts", "psql_events", "psql_ids", "psql_plain"]
VIEWS = ["psql_rich", "psql_feed"]


def psql(server, *commands: str, quiet: bool = False) -> tuple[int, str, str]:
    """Run the real psql binary with one -c per command: (exit code, stdout, stderr). `quiet` (-q)
    leaves out command tags, and psql's own notes such as "Did not find any relation"."""
    arguments = [shutil.which("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-h", server.host, "-p", str(server.port),
                 "-U", server.user, "-d", server.dbname] + (["-q"] if quiet else [])
    for command in commands:
        arguments += ["-c", command]
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    environment.update(LC_ALL="C", PAGER="", PSQL_PAGER="")
    result = subprocess.run(arguments, capture_output=True, text=True, timeout=PSQL_TIMEOUT_S, env=environment)
    return result.returncode, result.stdout, result.stderr


def others_dropped(server) -> list[str]:
    """Statements dropping the tables and views of public that this module did not make (a table's
    sequences and indexes go with it; CASCADE: PostgreSQL's may have dependents)."""
    with server.connect() as connection:
        relations = connection.execute(
            "SELECT c.relname, c.relkind FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')"
        ).fetchall()
    kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW"}
    return [f"DROP {kinds[kind]} IF EXISTS " + '"' + name.replace('"', '""') + '" CASCADE'
            for name, kind in sorted(relations) if not name.startswith(PREFIX)]


def listing(server, command: str) -> tuple[int, str, str]:
    """A meta-command run where only this module's relations exist, without removing anyone's."""
    return psql(server, "BEGIN", "SET LOCAL client_min_messages = warning", *others_dropped(server), command,
                "ROLLBACK", quiet=True)


@pytest.fixture(scope="module")
def servers(sql_cluster, postgres_server):
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    for server in (sql_cluster, postgres_server):
        with server.connect() as connection:
            _drop_relations(connection)
            for statement in SCHEMA:
                connection.execute(statement)
    yield sql_cluster, postgres_server
    for server in (sql_cluster, postgres_server):
        with server.connect() as connection:
            _drop_relations(connection)


def _drop_relations(connection) -> None:
    """This module's views and tables, dependents first."""
    for view in VIEWS:
        connection.execute(f"DROP VIEW IF EXISTS {view}")
    for table in reversed(TABLES):
        connection.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.mark.parametrize("command", ["\\l", "\\dn"])
def test_databases_and_schemas_are_listed_as_postgresql_lists_them(servers, command):
    ours, theirs = servers
    assert psql(ours, command) == psql(theirs, command)


@pytest.mark.parametrize("command", ["\\dt", "\\d", "\\di", "\\dv"])
def test_relations_are_listed_as_postgresql_lists_them(servers, command):
    """Tables, views, sequences (SERIAL, identity) and indexes, with their owner: the connecting user."""
    ours, theirs = servers
    result = listing(ours, command)
    assert result == listing(theirs, command)
    assert ("psql_rich" if command == "\\dv" else "psql_accounts") in result[1]


def test_the_listing_of_relations_includes_views(servers):
    ours, _ = servers
    rows = [[cell.strip() for cell in line.split("|")] for line in listing(ours, "\\d")[1].splitlines()]
    assert ["public", "psql_feed", "view", "postgres"] in rows
    assert ["public", "psql_rich", "view", "postgres"] in rows


@pytest.mark.parametrize("command", ["\\dt psql_*", "\\di psql_e*", "\\d psql_*s"])
def test_patterns_select_relations_as_in_postgresql(servers, command):
    """psql turns a pattern into a regular expression (OPERATOR(pg_catalog.~) ... COLLATE)."""
    ours, theirs = servers
    assert psql(ours, command) == psql(theirs, command)


@pytest.mark.parametrize("table", TABLES)
def test_a_table_is_described_as_postgresql_describes_it(servers, table):
    """Column types with modifiers, NOT NULL, defaults as PostgreSQL prints them, identity, and indexes
    (primary key, unique constraint, unique and plain indexes, quoted column names)."""
    ours, theirs = servers
    result = psql(ours, f"\\d {table}")
    assert result == psql(theirs, f"\\d {table}")
    assert f'Table "public.{table}"' in result[1]


@pytest.mark.parametrize("index", ["psql_accounts_pkey", "psql_accounts_email_key", "psql_events_kind",
                                   "psql_plain_order"])
def test_an_index_is_described_as_postgresql_describes_it(servers, index):
    ours, theirs = servers
    assert psql(ours, f"\\d {index}") == psql(theirs, f"\\d {index}")


@pytest.mark.parametrize("view", VIEWS)
def test_a_view_is_described_as_postgresql_describes_it(servers, view):
    """A view's columns, named by its column list or its query, with the types (and modifiers) of
    the columns they read; no indexes, no defaults, all nullable."""
    ours, theirs = servers
    result = psql(ours, f"\\d {view}")
    assert result == psql(theirs, f"\\d {view}")
    assert f'View "public.{view}"' in result[1]


def test_describing_a_missing_table_fails_as_in_postgresql(servers):
    ours, theirs = servers
    result = psql(ours, "\\d psql_nope")
    assert result == psql(theirs, "\\d psql_nope")
    assert result[2] == 'Did not find any relation named "psql_nope".\n'
