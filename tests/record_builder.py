"""A writer's bookkeeping in miniature: allocate LSNs and give every record correct backlinks
(prev_volume, prev_pg, prev_page), so storage tests can build realistic redo streams."""

from __future__ import annotations

from aurora_db.records import Record, pg_of_page


class RecordBuilder:
    def __init__(self, first_lsn: int = 1, *, last_lsn: int = 0, pg_tails: dict[int, int] | None = None):
        self.next_lsn = first_lsn
        self.last_lsn = last_lsn
        self.pg_tail: dict[int, int] = dict(pg_tails or {})
        self.page_tail: dict[int, int] = {}
        self.slots: dict[int, int] = {}

    def record(self, page_id: int, op: str, args: tuple, cpl: bool = True) -> Record:
        lsn = self.next_lsn
        pg = pg_of_page(page_id)
        record = Record(lsn, page_id, self.last_lsn, self.pg_tail.get(pg, 0), self.page_tail.get(page_id, 0), cpl, op, args)
        self.next_lsn += 1
        self.last_lsn = lsn
        self.pg_tail[pg] = lsn
        self.page_tail[page_id] = lsn
        return record

    def heap_init(self, page_id: int) -> Record:
        self.slots[page_id] = 0
        return self.record(page_id, "heap_init", ())

    def heap_insert(self, page_id: int, values: list, xmin: int = 1) -> Record:
        slot = self.slots[page_id]
        self.slots[page_id] = slot + 1
        return self.record(page_id, "heap_insert", (slot, xmin, values))

    def heap_set_xmax(self, page_id: int, slot: int, xmax: int) -> Record:
        return self.record(page_id, "heap_set_xmax", (slot, xmax))
