"""Engine turns on a real cluster (writer cache of 64 pages): a statement runs on the event loop
unless it must wait; one that misses pages, or outgrows the inline budget, is given up with its
changes undone and runs again, so its effects land exactly once, and other sessions go on."""

from __future__ import annotations

import asyncio
import concurrent.futures

from aurora_db.constants import ENGINE_INLINE_RECORDS_MAX
from compute_node.engine import Turn
from tests.admin import writer_status

ROWS = 3 * ENGINE_INLINE_RECORDS_MAX  # an UPDATE of all of them makes far more records than one inline call may


def _admin_status(sql_cluster) -> dict:
    return writer_status(sql_cluster.port + 20)


def test_a_statement_moved_off_the_loop_changes_every_row_exactly_once(sql_cluster):
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE turns_big (id int PRIMARY KEY, v int NOT NULL, pad text)")
        with connection.cursor().copy("COPY turns_big FROM STDIN") as copy:
            for i in range(ROWS):
                copy.write_row((i, i, "p" * 100))
        before = _admin_status(sql_cluster)
        assert connection.execute("UPDATE turns_big SET v = v + 1").pgresult.command_status == f"UPDATE {ROWS}".encode()
        after = _admin_status(sql_cluster)
        assert after["engine_calls_moved"] > before["engine_calls_moved"]
        assert connection.execute("SELECT count(*), sum(v) FROM turns_big").fetchone() == (ROWS, sum(range(ROWS)) + ROWS)
        assert connection.execute("SELECT count(*) FROM turns_big WHERE v <> id + 1").fetchone() == (0,)
        connection.execute("DROP TABLE turns_big")


def test_page_misses_are_read_in_the_background_and_sessions_get_the_right_rows(sql_cluster):
    """Point reads of a table far bigger than the cache: each miss is read outside the engine's
    turn and the statement retried, while seven other sessions do the same."""
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE turns_cold (id int PRIMARY KEY, v text NOT NULL)")
        with connection.cursor().copy("COPY turns_cold FROM STDIN") as copy:
            for i in range(2000):
                copy.write_row((i, f"value-{i}-" + "x" * 200))
    before = _admin_status(sql_cluster)

    def reader(worker: int) -> list[str]:
        with sql_cluster.connect() as connection:
            return [connection.execute("SELECT v FROM turns_cold WHERE id = %s", (i,)).fetchone()[0]
                    for i in range(worker, 2000, 97)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(reader, range(8)))
    for worker, values in enumerate(results):
        assert values == [f"value-{i}-" + "x" * 200 for i in range(worker, 2000, 97)]
    assert _admin_status(sql_cluster)["engine_inline_misses"] > before["engine_inline_misses"]
    with sql_cluster.connect() as connection:
        connection.execute("DROP TABLE turns_cold")


def test_turns_are_taken_in_arrival_order_and_a_cancelled_waiter_passes_its_turn_on():
    async def scenario():
        turn, order = Turn(), []

        async def worker(name, hold_s):
            async with turn:
                order.append(name)
                await asyncio.sleep(hold_s)

        first = asyncio.create_task(worker("first", 0.05))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(worker(name, 0)) for name in ("second", "third", "fourth")]
        await asyncio.sleep(0)
        waiting[1].cancel()  # "third" gives up while waiting
        await asyncio.gather(first, waiting[0], waiting[2])
        assert waiting[1].cancelled()
        assert order == ["first", "second", "fourth"]
        async with turn:  # free again: taken at once
            order.append("last")
        assert order[-1] == "last"

    asyncio.run(scenario())
