"""The page format and the one redo-apply function that compute and storage both use.

DESIGN.md 3: "The same apply function is used by compute (on its cached page) and by storage
(to materialize pages)". A page is rebuilt by applying its records in LSN order, starting from an
init record; `apply` is deterministic, so every segment and every compute node that applies the
same chain holds the same page. Invariant: page.lsn is the LSN of the last record applied to it,
and a record is applied only to the page it names, in increasing LSN order.

Page kinds:
  meta   the volume's root (page 0): a small key -> value map
  clog   transaction status, one byte per transaction id (DESIGN.md 4: commit records in the log)
  heap   table rows as MVCC tuples [xmin, xmax, values], slots never move; HOT links and
         pruning's redirects, dead stubs and free slots (HeapPage)
  btree  a B+tree node: sorted keys with row ids (leaf) or child page ids (internal)
  table  a table's physical root: its heap page chain and its index roots
  sequence  one sequence (SERIAL, identity): its bounds and the limit below which values may have
            been handed out (values are allocated in batches; a new writer continues above it)
  freelist  page ids the volume hands out again before it grows, as runs [first, count], first
            out first (compute_node/free_space.py), and the next freelist page

Values inside pages and records (row values, B-tree keys) are the engine's Python values. The
types msgpack lacks travel as extension types (aurora_db/values.py): numeric as its exact
str() (scale kept: '1.50' stays '1.50'), date as int32 days since 2000-01-01, timestamp and
timestamptz as int64 microseconds since 2000-01-01 (UTC for timestamptz), as PostgreSQL stores
them. Decoding restores the identical Python value, so B-tree keys compare the same before and
after a page crosses the wire.
"""

from __future__ import annotations

from typing import Callable

from aurora_db.constants import BATCH_RECORDS_MAX, FRAME_BYTES_MAX, PAGE_BYTES_MAX
from aurora_db.records import LazyArgs, Record
from aurora_db.values import packb

XIDS_PER_CLOG_PAGE = 8192
XID_IN_PROGRESS = 0
XID_COMMITTED = 1
XID_ABORTED = 2

TUPLE_OVERHEAD_BYTES = 24
LINE_POINTER_BYTES = 4  # a heap slot without a tuple: free, a redirect or a dead stub
SLOT_DEAD = -1
KEY_OVERHEAD_BYTES = 16
PAGE_HEADER_BYTES = 64
ROW_BYTES_MAX = PAGE_BYTES_MAX - PAGE_HEADER_BYTES  # a row lives in one heap page
KEY_BYTES_MAX = (PAGE_BYTES_MAX - PAGE_HEADER_BYTES) // 3  # a B-tree node splits into halves of >= 1 key
RECORD_OVERHEAD_BYTES = 256  # a record's fields around its largest payload, a page image
assert BATCH_RECORDS_MAX * (PAGE_BYTES_MAX + RECORD_OVERHEAD_BYTES) < FRAME_BYTES_MAX  # a batch fits a frame


class Page:
    __slots__ = ("page_id", "lsn")
    kind = "?"

    def __init__(self, page_id: int, lsn: int):
        self.page_id = page_id
        self.lsn = lsn


class MetaPage(Page):
    __slots__ = ("values",)
    kind = "meta"

    def __init__(self, page_id, lsn, values=None):
        super().__init__(page_id, lsn)
        self.values = dict(values or {})

    def state(self):
        return self.values


class ClogPage(Page):
    __slots__ = ("status",)
    kind = "clog"

    def __init__(self, page_id, lsn, status=None):
        super().__init__(page_id, lsn)
        self.status = bytearray(status) if status is not None else bytearray(XIDS_PER_CLOG_PAGE)

    def state(self):
        return bytes(self.status)


class HeapPage(Page):
    """Slots never move: an index entry names (page, slot). A slot holds one of
      [xmin, xmax, values]  a tuple (xmax 0: live);
      None                  free: no index entry names it, so any insert may take it;
      k >= 0                a redirect to slot k: a HOT chain's root whose oldest versions were pruned;
      SLOT_DEAD (-1)        a dead stub: every version of its chain was pruned, but index entries
                            may still name it (so it is never reused).
    links[s] = n: slot n holds the HOT successor of slot s's tuple, the next version made by an
    UPDATE that changed no indexed column and fit this page, so it got no index entry of its own.
    `heap_only` holds such successors' slots: pruning may free them, as nothing but a chain names them."""

    __slots__ = ("tuples", "next_page", "links", "heap_only", "_used_bytes", "_taken_below")
    kind = "heap"

    def __init__(self, page_id, lsn, tuples=None, next_page=0, links=None, heap_only=None):
        super().__init__(page_id, lsn)
        self.tuples = [list(t) if isinstance(t, (list, tuple)) else t for t in tuples] if tuples else []
        self.next_page = next_page
        self.links = dict(zip(links[::2], links[1::2])) if links else {}
        self.heap_only = set(heap_only) if heap_only else set()
        self._used_bytes = None  # computed on first use: storage materializes pages and never asks
        self._taken_below = 0  # every slot below it (that exists) holds something: free_slot starts here

    @property
    def used_bytes(self) -> int:
        if self._used_bytes is None:
            live = [t[2] for t in self.tuples if t.__class__ is list]
            self._used_bytes = (PAGE_HEADER_BYTES + (len(self.tuples) - len(live)) * LINE_POINTER_BYTES
                                + len(live) * TUPLE_OVERHEAD_BYTES + packed_items_bytes(live))
        return self._used_bytes

    def grow(self, change: Callable[[], int]) -> None:
        """Apply a change of size (a function: it costs an encoding) if the size is known yet."""
        if self._used_bytes is not None:
            self._used_bytes += change()

    def fits(self, values: list) -> bool:
        return self.used_bytes + tuple_bytes(values) <= PAGE_BYTES_MAX

    def free_slot(self) -> int:
        """Where a new tuple goes: the first free slot, else a new one at the end. The search starts
        past the slots known to be taken: a page of many versions is not walked on every insert."""
        try:
            slot = self.tuples.index(None, self._taken_below)
        except ValueError:
            slot = len(self.tuples)
        self._taken_below = slot
        return slot

    def state(self):
        links = [n for pair in sorted(self.links.items()) for n in pair]
        return [self.tuples, self.next_page, links, sorted(self.heap_only)]


class BTreePage(Page):
    """A B+tree node. Leaf: keys[i] -> vals[i] (a row id [page, slot]); `right` is the next leaf.
    Internal: len(vals) == len(keys) + 1 and child vals[i] holds keys k with keys[i-1] <= k < keys[i]."""

    __slots__ = ("is_leaf", "keys", "vals", "right", "_used_bytes")
    kind = "btree"

    def __init__(self, page_id, lsn, is_leaf=True, keys=None, vals=None, right=0):
        super().__init__(page_id, lsn)
        self.is_leaf = is_leaf
        self.keys = [tuple(k) for k in keys] if keys else []
        self.vals = [tuple(v) if isinstance(v, list) else v for v in vals] if vals else []
        self.right = right
        self._used_bytes = None  # computed on first use, as HeapPage's

    @property
    def used_bytes(self) -> int:
        if self._used_bytes is None:
            keys = self.keys
            self._used_bytes = PAGE_HEADER_BYTES + len(keys) * KEY_OVERHEAD_BYTES + packed_items_bytes(keys)
        return self._used_bytes

    def fits(self, key) -> bool:
        return self.used_bytes + key_bytes(key) <= PAGE_BYTES_MAX

    def state(self):
        return [self.is_leaf, [list(k) for k in self.keys], [list(v) if isinstance(v, tuple) else v for v in self.vals], self.right]


class TablePage(Page):
    """A table's physical root: first/last heap page and index roots, keyed by name."""

    __slots__ = ("values",)
    kind = "table"

    def __init__(self, page_id, lsn, values=None):
        super().__init__(page_id, lsn)
        self.values = dict(values or {})

    def state(self):
        return self.values


class SequencePage(Page):
    """A sequence: a small key -> value map (increment, min_value, max_value, limit, name)."""

    __slots__ = ("values",)
    kind = "sequence"

    def __init__(self, page_id, lsn, values=None):
        super().__init__(page_id, lsn)
        self.values = dict(values or {})

    def state(self):
        return self.values


class FreeListPage(Page):
    """Free page ids as runs [first, count] (count >= 1), the oldest first; `next_page` is the next
    freelist page (0: this is the last)."""

    __slots__ = ("runs", "next_page")
    kind = "freelist"

    def __init__(self, page_id, lsn, runs=None, next_page=0):
        super().__init__(page_id, lsn)
        self.runs = [list(run) for run in runs] if runs else []
        self.next_page = next_page

    def state(self):
        return [self.runs, self.next_page]


FREELIST_RUNS_MAX = 400  # runs per freelist page
assert PAGE_HEADER_BYTES + FREELIST_RUNS_MAX * 12 <= PAGE_BYTES_MAX  # [first, count]: at most 11 bytes packed


def tuple_bytes(values: list) -> int:
    return TUPLE_OVERHEAD_BYTES + len(packb(values))


def key_bytes(key: tuple) -> int:
    return KEY_OVERHEAD_BYTES + len(packb(list(key)))


def packed_items_bytes(items: list) -> int:
    """sum(len(packb(item)) for item in items), exactly, with one encoding instead of one per item.
    A page's size is summed this way when the writer first needs it for a page read from storage
    (a B-tree leaf holds hundreds of keys). A tuple packs as the list it holds; the array header
    of the one encoding (1, 3 or 5 bytes by the count) is taken off."""
    count = len(items)
    header_bytes = 1 if count < 16 else 3 if count < 1 << 16 else 5
    return len(packb(items)) - header_bytes


_KINDS = {cls.kind: cls for cls in (MetaPage, ClogPage, HeapPage, BTreePage, TablePage, SequencePage, FreeListPage)}


def to_wire(page: Page) -> list:
    return [page.kind, page.page_id, page.lsn, page.state()]


def from_wire(wire: list) -> Page:
    kind, page_id, lsn, state = wire
    cls = _KINDS[kind]
    if cls in (MetaPage, TablePage, ClogPage, SequencePage):
        return cls(page_id, lsn, state)
    if cls is HeapPage:
        return HeapPage(page_id, lsn, *state)
    if cls is FreeListPage:
        return FreeListPage(page_id, lsn, *state)
    return BTreePage(page_id, lsn, state[0], state[1], state[2], state[3])


# --- redo apply -------------------------------------------------------------------------------


def apply(page: Page | None, record: Record) -> Page:
    """Apply one redo record to a page (None if the page does not exist yet) and return the page.

    Mutates `page` in place. Init records ("*_init") create the page and ignore what was there.
    """
    op = record.op
    args = record.args.decoded() if isinstance(record.args, LazyArgs) else record.args  # decoded once
    if op.endswith("_init"):
        page = _INITS[op](record.page_id, record.lsn, *args)
    else:
        assert page is not None, f"record {record.lsn} ({op}) applied to missing page {record.page_id}"
        assert page.page_id == record.page_id, (page.page_id, record.page_id)
        assert record.lsn > page.lsn, f"record {record.lsn} applied to page {page.page_id} already at {page.lsn}"
        _OPS[op](page, *args)
    page.lsn = record.lsn
    return page


def _meta_set(page: MetaPage, key, value):
    page.values[key] = value


def _clog_set(page: ClogPage, xid, status):
    page.status[xid % XIDS_PER_CLOG_PAGE] = status


def _heap_insert(page: HeapPage, slot, xmin, values):
    tuples = page.tuples
    if slot == len(tuples):
        tuples.append([xmin, 0, values])
        page.grow(lambda: tuple_bytes(values))
    else:
        assert tuples[slot] is None, f"heap insert into slot {slot} of page {page.page_id}, which is taken"
        tuples[slot] = [xmin, 0, values]
        page.grow(lambda: tuple_bytes(values) - LINE_POINTER_BYTES)


def _heap_insert_many(page: HeapPage, first_slot, xmin, rows):
    """Tuples appended at the page's end from `first_slot` on, all with xmin `xmin`: a bulk load's
    rows (COPY into a table without indexes), a page's worth in one record instead of one each."""
    tuples = page.tuples
    assert first_slot == len(tuples), f"bulk insert at slot {first_slot} of page {page.page_id}, which has {len(tuples)}"
    tuples.extend([xmin, 0, values] for values in rows)
    page.grow(lambda: sum(map(tuple_bytes, rows)))


def _heap_set_xmax(page: HeapPage, slot, xmax):
    page.tuples[slot][1] = xmax


def _heap_hot_update(page: HeapPage, old_slot, xid, new_slot, values):
    """A HOT update: xmax on the old version and its successor, with no index entry, on this page."""
    page.tuples[old_slot][1] = xid
    _heap_insert(page, new_slot, xid, values)
    page.links[old_slot] = new_slot
    page.heap_only.add(new_slot)


def _heap_prune(page: HeapPage, redirects, dead, freed):
    """Versions no snapshot can see any more (compute_node/heap.py plans which): `redirects` pairs
    [root, target, ...] make a chain's root point past its pruned versions, `dead` roots become
    stubs, `freed` heap-only slots become free, and links to them go. Trailing free slots are
    dropped."""
    tuples = page.tuples
    for root, target in zip(redirects[::2], redirects[1::2]):
        _empty_slot(page, root)
        tuples[root] = target
    for slot in dead:
        _empty_slot(page, slot)
        tuples[slot] = SLOT_DEAD
    for slot in freed:
        _empty_slot(page, slot)
        tuples[slot] = None
        page.heap_only.discard(slot)
        page._taken_below = min(page._taken_below, slot)
    if freed:  # a link left by an undone or aborted update must not lead to a freed slot
        gone = set(freed)
        for predecessor in [s for s, successor in page.links.items() if successor in gone]:
            del page.links[predecessor]
    while tuples and tuples[-1] is None:
        tuples.pop()
        page.grow(lambda: -LINE_POINTER_BYTES)


def _empty_slot(page: HeapPage, slot) -> None:
    entry = page.tuples[slot]
    if entry.__class__ is list:
        page.grow(lambda: LINE_POINTER_BYTES - tuple_bytes(entry[2]))
    page.links.pop(slot, None)


def _heap_set_next(page: HeapPage, next_page):
    page.next_page = next_page


def _freelist_push(page: FreeListPage, runs):
    assert len(page.runs) + len(runs) <= FREELIST_RUNS_MAX, (page.page_id, len(page.runs), len(runs))
    page.runs.extend([list(run) for run in runs])


def _freelist_take(page: FreeListPage):
    """The first run's first page is handed out."""
    run = page.runs[0]
    if run[1] == 1:
        del page.runs[0]
    else:
        page.runs[0] = [run[0] + 1, run[1] - 1]


def _freelist_set_next(page: FreeListPage, next_page):
    page.next_page = next_page


def _btree_insert(page: BTreePage, pos, key, val):
    key = tuple(key)
    page.keys.insert(pos, key)
    if page.is_leaf:
        page.vals.insert(pos, tuple(val))
    else:
        page.vals.insert(pos + 1, val)
    if page._used_bytes is not None:
        page._used_bytes += key_bytes(key)


def _btree_delete(page: BTreePage, positions):
    """VACUUM: remove a leaf's entries at `positions` (ascending); their tuples are gone."""
    assert page.is_leaf, f"btree_delete on internal page {page.page_id}"
    for position in reversed(positions):
        key = page.keys.pop(position)
        page.vals.pop(position)
        if page._used_bytes is not None:
            page._used_bytes -= key_bytes(key)


def _table_set(page: TablePage, key, value):
    page.values[key] = value


def _sequence_set(page: SequencePage, key, value):
    page.values[key] = value


_INITS = {
    "meta_init": lambda page_id, lsn: MetaPage(page_id, lsn),
    "clog_init": lambda page_id, lsn: ClogPage(page_id, lsn),
    "heap_init": lambda page_id, lsn, next_page=0: HeapPage(page_id, lsn, None, next_page),
    "btree_init": lambda page_id, lsn, is_leaf, keys, vals, right: BTreePage(page_id, lsn, is_leaf, keys, vals, right),
    "table_init": lambda page_id, lsn, values: TablePage(page_id, lsn, values),
    "sequence_init": lambda page_id, lsn, values: SequencePage(page_id, lsn, values),
    "freelist_init": lambda page_id, lsn: FreeListPage(page_id, lsn),
}

_OPS = {
    "meta_set": _meta_set,
    "clog_set": _clog_set,
    "heap_insert": _heap_insert,
    "heap_insert_many": _heap_insert_many,
    "heap_set_xmax": _heap_set_xmax,
    "heap_hot_update": _heap_hot_update,
    "heap_prune": _heap_prune,
    "heap_set_next": _heap_set_next,
    "btree_insert": _btree_insert,
    "btree_delete": _btree_delete,
    "table_set": _table_set,
    "sequence_set": _sequence_set,
    "freelist_push": _freelist_push,
    "freelist_take": _freelist_take,
    "freelist_set_next": _freelist_set_next,
}

OPS = frozenset(_OPS) | frozenset(_INITS)
