"""Sequences behind SERIAL/BIGSERIAL and identity columns, stored durably in their own pages.

A sequence is one page (kind "sequence") holding its bounds and `reserved`: every value below it
may have been handed out. Values are reserved a batch at a time by one redo record, like
transaction ids (transactions.py, xid_limit), and handed out from memory; a new writer (restart
or failover) starts at `reserved`, so a value is never given twice, even after a crash. As in
PostgreSQL, sequences are not transactional: a rolled-back INSERT still uses up its value. But a
statement the engine itself gives up and runs again (a page miss, a row lock: engine.py) rewinds
what it drew, so a bulk INSERT into a new table numbers its rows from 1, as PostgreSQL does.
Invariants: nextval never runs inside an MTR; values increase by `increment` and stay within
[min_value, max_value], else 2200H; a rewind happens in the turn that drew the values, before
any other statement could draw one.
"""

from __future__ import annotations

from aurora_db.errors import DatabaseError
from compute_node.page_store import META_PAGE, PageStore

SEQUENCE_BATCH = 32  # values reserved per redo record (PostgreSQL's SEQ_LOG_VALS)
SEQUENCE_MAX = {"int2": 2**15 - 1, "int4": 2**31 - 1, "int8": 2**63 - 1}


class SequenceLimitReached(DatabaseError):
    sqlstate = "2200H"


class Sequences:
    def __init__(self, store: PageStore):
        self.store = store
        self._next: dict[int, list[int]] = {}  # page id -> [next value, reserved limit]
        self._first: dict[int, int] = {}  # page id -> the first value this process handed out

    def create(self, name: str, type_name: str, start: int = 1, increment: int = 1) -> int:
        """One MTR: a new sequence page; returns its id."""
        with self.store.mtr(META_PAGE):
            page_id = self.store.allocate_page()
            self.store.log(page_id, "sequence_init", {"name": name, "increment": increment, "min_value": 1,
                                                       "max_value": SEQUENCE_MAX[type_name], "reserved": start})
        return page_id

    def forget(self, page_id: int) -> None:
        """The sequence's page was freed (its table dropped): its batch is gone with it."""
        self._next.pop(page_id, None)
        self._first.pop(page_id, None)

    def mark(self) -> dict[int, int]:
        """Where every sequence in use stands, before an attempt at a statement."""
        return {page_id: state[0] for page_id, state in self._next.items()}

    def rewind(self, mark: dict[int, int]) -> None:
        """The attempt begun at `mark` was given up: hand its values out again. Reserved batches
        stay reserved (the limit only grows), so no value is ever given twice."""
        for page_id, state in self._next.items():
            state[0] = mark.get(page_id, self._first[page_id])

    def nextval(self, page_id: int) -> int:
        state = self._next.get(page_id)
        page = self.store.get(page_id)
        values = page.values
        if state is None:
            state = self._next[page_id] = [values["reserved"], values["reserved"]]
            self._first[page_id] = values["reserved"]
        value = state[0]
        if value > values["max_value"]:
            raise SequenceLimitReached(
                f'nextval: reached maximum value of sequence "{values["name"]}" ({values["max_value"]})')
        if value >= state[1]:
            reserved = value + SEQUENCE_BATCH * values["increment"]
            with self.store.mtr(page_id):
                self.store.log(page_id, "sequence_set", "reserved", reserved)
            state[1] = reserved
        state[0] = value + values["increment"]
        return value
