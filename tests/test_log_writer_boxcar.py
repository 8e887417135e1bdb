"""The writer's boxcar (compute_node/log_writer.py): finished MTRs wait until a commit needs them or
BOXCAR_DELAY_MS after the first of them, then leave together. Each boxcar's timer is its own: a
timer armed for a boxcar a commit already shipped does not ship the next boxcar early."""

from __future__ import annotations

import asyncio

from aurora_db.quorum import DurabilityTracker
from compute_node import log_writer as log_writer_module
from compute_node.log_writer import LogWriter

DELAY_MS = 200


class RecordingClient:
    """Stands in for the StorageClient's shipping side: what was shipped, one list per ship."""

    def __init__(self):
        self.ships: list[list[int]] = []

    def ship(self, records) -> list[list]:
        self.ships.append([record.lsn for record in records])
        return []


def finish_one_mtr(writer: LogWriter) -> int:
    writer.reserve(1)
    record = writer.allocate(0, 0, "heap_init", ())
    return writer.finish_mtr([record])[-1].lsn


async def test_a_boxcar_leaves_after_its_own_delay_not_an_earlier_boxcar_s(monkeypatch):
    monkeypatch.setattr(log_writer_module, "BOXCAR_DELAY_MS", DELAY_MS)
    client = RecordingClient()
    writer = LogWriter(asyncio.get_running_loop(), client, DurabilityTracker(vdl=0, pg_tails={}, lsn_floor=0))

    first = finish_one_mtr(writer)  # arms the first boxcar's timer
    writer.ship_now()  # a commit ships it at once
    assert client.ships == [[first]]

    await asyncio.sleep(DELAY_MS / 2 / 1000)
    second = finish_one_mtr(writer)  # a new boxcar, with a timer of its own
    fired = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(DELAY_MS / 2 / 1000 * 1.2, fired.set_result, None)
    await fired  # past the first timer's deadline; the second's timer was armed after it
    assert client.ships == [[first]], "the first boxcar's timer did not ship the second boxcar early"

    await asyncio.sleep(DELAY_MS * 2 / 1000)
    assert client.ships == [[first], [second]], "the second boxcar left on its own timer"
