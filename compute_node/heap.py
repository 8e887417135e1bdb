"""A table's rows: MVCC tuples in a chain of heap pages, found from the table's root page.

A row id (tid) is (page_id, slot); slots never move, so index entries stay valid. An UPDATE ends
the old version (xmax, as in PostgreSQL) and writes a new one. When no indexed column changes and
the new version fits the old one's page, it is a HOT update (PostgreSQL's heap-only tuples): one
redo record, the new version linked from the old one and no new index entry. An index entry then
names a chain's root, and `versions` walks the chain.

Pruning (PostgreSQL's heap_page_prune) reclaims versions no snapshot can see any more, a page at
a time: a chain's root becomes a redirect past its pruned versions (or a dead stub once the whole
chain is dead), and pruned heap-only versions free their slots for later inserts. That bounds a
page under steady updates: the space an update needs comes back from the versions it ended.

VACUUM (Heap.vacuum) also removes the index entries that name dead stubs, and frees the stubs.

A version that an UPDATE moved off its page (no room for a HOT one) or a DELETE ended is counted
against its page, in memory (ReusablePages); once a page has REUSE_ENDED_VERSIONS_MIN of them, a
new row goes there, pruned, before the last page. A page with fewer (a full page that one row
left, as after a bulk load) is not worth a prune record per new row: its HOT updates reuse that
room.

Invariants: the table page names the first and last heap page; a new page is linked in the same
MTR that inserts into it; HOT versions go to their chain's page; a chain is walked only while each
link's successor has xmin equal to its predecessor's xmax (a link left by an aborted or undone
update leads nowhere); pruning frees only heap-only versions, and only ones before the chain's
first version some snapshot may still see; VACUUM frees a dead stub only once no index names it.
"""

from __future__ import annotations

from typing import Callable, Iterator

from aurora_db import pages
from compute_node.page_store import META_PAGE, PageStore

Tid = tuple[int, int]
REUSABLE_PAGES_PER_TABLE_MAX = 64  # pages remembered per table as worth pruning for new rows
REUSE_TRIES_PER_INSERT = 2  # remembered pages an insert prunes at most, looking for room
REUSE_ENDED_VERSIONS_MIN = 4  # a page is worth pruning for new rows once this many versions ended on it
ENDED_TALLY_PAGES_MAX = 4096  # pages whose ended versions are counted below that, per table


class Heap:
    def __init__(self, store: PageStore, table_page_id: int):
        self.store = store
        self.table_page_id = table_page_id

    @staticmethod
    def create(store: PageStore) -> int:
        """Inside an MTR: make a table root page and its first heap page; returns the root's id."""
        table_page_id = store.allocate_page()
        heap_page_id = store.allocate_page()
        store.log(heap_page_id, "heap_init", 0)
        store.log(table_page_id, "table_init", {"first_heap": heap_page_id, "last_heap": heap_page_id, "indexes": {}})
        return table_page_id

    def prepare_insert(self, values: list, dead_to_all: Callable[[], Callable[[int, int], bool]] | None = None) -> int:
        """Before the MTR: returns the page the tuple goes to, or 0 if a new page is needed. With
        `dead_to_all` (Transactions.dead_to_all), a page an update or delete left dead versions on
        is pruned and reused first (PostgreSQL's free space map, kept in memory only)."""
        if dead_to_all is not None:
            target = self._reusable_page(values, dead_to_all)
            if target:
                return target
        table = self.store.get(self.table_page_id)
        last = self.store.get(table.values["last_heap"])
        return last.page_id if last.fits(values) else 0

    def _reusable_page(self, values: list, dead_to_all) -> int:
        """A remembered page the tuple fits, pruned if need be (at most REUSE_TRIES_PER_INSERT are
        pruned per insert). A page with versions that only a snapshot still holds goes to the back
        of the list; one with no ended version left is forgotten."""
        reusable = self.store.reusable_pages.get(self.table_page_id)
        if reusable is None:
            return 0
        candidates = reusable.candidates
        dead = None
        for _ in range(min(REUSE_TRIES_PER_INSERT, len(candidates))):
            page_id = candidates.pop(0)
            page = self.store.get(page_id)
            if page.fits(values):
                candidates.insert(0, page_id)
                return page_id
            dead = dead or dead_to_all()
            if self.prune(page_id, dead) and self.store.get(page_id).fits(values):
                candidates.insert(0, page_id)
                return page_id
            if has_ended_versions(self.store.get(page_id)):
                candidates.append(page_id)
        return 0

    def note_ended_versions(self, page_id: int, versions: int) -> None:
        """An UPDATE that moved a row off `page_id`, or a DELETE, ended `versions` there (the row's
        version and the HOT versions the page holds, an estimate): they are pruned later."""
        self.store.reusable_pages.setdefault(self.table_page_id, ReusablePages()).note(page_id, versions)

    def pages_for_insert(self, target_page_id: int = 0) -> list[int]:
        """The existing pages an insert may read or change: pin them at the MTR's start."""
        pinned = [META_PAGE, self.table_page_id, self.store.get(self.table_page_id).values["last_heap"]]
        return pinned + [target_page_id] if target_page_id and target_page_id not in pinned else pinned

    def insert(self, values: list, xid: int, target_page_id: int) -> Tid:
        """Inside an MTR, after prepare_insert. Returns the new tuple's tid."""
        if not target_page_id:
            target_page_id = self._append_page()
        slot = self.store.get(target_page_id).free_slot()
        self.store.log(target_page_id, "heap_insert", slot, xid, values)
        return target_page_id, slot

    def insert_many(self, rows: list[list], xid: int) -> list[Tid]:
        """Inside an MTR that pinned pages_for_insert(): as many of `rows` (from the first) as fit
        at the end of the table's last page, or else of a new page, in one record; returns their
        tids, at least one (a row always fits an empty page). A bulk load's path: it neither reuses
        free space elsewhere nor makes index entries, so only a table without indexes takes it."""
        last_page = self.store.get(self.store.get(self.table_page_id).values["last_heap"])
        count = _fitting(rows, pages.PAGE_BYTES_MAX - last_page.used_bytes)
        if not count:
            last_page = self.store.get(self._append_page())
            count = _fitting(rows, pages.PAGE_BYTES_MAX - last_page.used_bytes)
            assert count, f"a row of {pages.tuple_bytes(rows[0])} bytes does not fit an empty page"
        first_slot = len(last_page.tuples)
        self.store.log(last_page.page_id, "heap_insert_many", first_slot, xid, rows[:count])
        return [(last_page.page_id, first_slot + n) for n in range(count)]

    def _append_page(self) -> int:
        """Inside an MTR that pinned pages_for_insert(): a new empty last page of the table."""
        old_last = self.store.get(self.table_page_id).values["last_heap"]
        page_id = self.store.allocate_page()
        self.store.log(page_id, "heap_init", 0)
        self.store.log(old_last, "heap_set_next", page_id)
        self.store.log(self.table_page_id, "table_set", "last_heap", page_id)
        return page_id

    def hot_slot(self, old_tid: Tid, values: list) -> int | None:
        """Before the MTR: the slot a HOT successor of `old_tid` takes on its page, or None if it
        does not fit there."""
        page = self.store.get(old_tid[0])
        return page.free_slot() if page.fits(values) else None

    def hot_update(self, old_tid: Tid, xid: int, slot: int, values: list) -> Tid:
        """Inside an MTR on the old version's page: end it and link its successor in `slot`."""
        self.store.log(old_tid[0], "heap_hot_update", old_tid[1], xid, slot, values)
        return old_tid[0], slot

    def set_xmax(self, tid: Tid, xid: int) -> None:
        with self.store.mtr(tid[0]):
            self.store.log(tid[0], "heap_set_xmax", tid[1], xid)

    def fetch(self, tid: Tid) -> list:
        """[xmin, xmax, values] of one tuple (a tid a scan or `versions` gave, never a redirect)."""
        return self.store.get(tid[0]).tuples[tid[1]]

    def versions(self, tid: Tid) -> Iterator[tuple[Tid, list]]:
        """The versions of the chain an index entry names, oldest first, as (tid, [xmin, xmax,
        values]): at most one of them is visible to any snapshot."""
        page = self.store.get(tid[0])
        yield from chain(page, tid[1])

    def scan(self) -> Iterator[tuple[Tid, list]]:
        """Every tuple, visible or not, as (tid, [xmin, xmax, values])."""
        page_id = self.store.get(self.table_page_id).values["first_heap"]
        while page_id:
            page = self.store.get(page_id)
            tuples = page.tuples
            for slot in range(len(tuples)):
                entry = tuples[slot]
                if entry.__class__ is list:
                    yield (page_id, slot), entry
            page_id = page.next_page

    def page_count(self) -> int:
        """The heap pages of the table (pg_relation_size)."""
        count, page_id = 0, self.store.get(self.table_page_id).values["first_heap"]
        while page_id:
            count += 1
            page_id = self.store.get(page_id).next_page
        return count

    def chains(self) -> Iterator[tuple[Tid, list[tuple[Tid, list]]]]:
        """Every chain as (root tid, its versions oldest first): what an index entry names."""
        page_id = self.store.get(self.table_page_id).values["first_heap"]
        while page_id:
            page = self.store.get(page_id)
            for slot, entry in enumerate(page.tuples):
                if is_root(page, slot, entry):
                    yield (page_id, slot), list(chain(page, slot))
            page_id = page.next_page

    def vacuum(self, dead: Callable[[int, int], bool], trees) -> int:
        """PostgreSQL's lazy VACUUM of this table: prune every page, remove the entries of the
        B-trees `trees` (all of the table's indexes) that name dead stubs and unlink the leaves
        that leaves empty (to the free list), then free those stubs for new rows. Returns the stubs freed. Every step is an MTR of one page that a rerun
        finds done (the engine reruns a call that met a page miss). Safe beside an index built
        meanwhile: a build names no stub (`chains` skips them)."""
        heap_page_ids = []
        page_id = self.store.get(self.table_page_id).values["first_heap"]
        while page_id:
            heap_page_ids.append(page_id)
            self.prune(page_id, dead, thorough=True)
            page_id = self.store.get(page_id).next_page
        stubs = {(page_id, slot) for page_id in heap_page_ids
                 for slot, entry in enumerate(self.store.get(page_id).tuples) if entry == pages.SLOT_DEAD}
        if not stubs:
            return 0
        for tree in trees:
            for leaf_id in list(tree.leaf_ids()):
                positions = [i for i, tid in enumerate(self.store.get(leaf_id).vals) if tid in stubs]
                if positions:
                    with self.store.mtr(leaf_id):
                        self.store.log(leaf_id, "btree_delete", positions)
            tree.drop_empty_leaves()
        by_page: dict[int, list[int]] = {}
        for page_id, slot in sorted(stubs):
            by_page.setdefault(page_id, []).append(slot)
        for page_id, slots in by_page.items():
            with self.store.mtr(page_id):
                self.store.log(page_id, "heap_prune", [], [], slots)
            self.note_ended_versions(page_id, max(len(slots), REUSE_ENDED_VERSIONS_MIN))  # room for new rows now
        return len(stubs)

    def prune(self, page_id: int, dead: Callable[[int, int], bool], thorough: bool = False) -> bool:
        """Prune one page in its own MTR (it changes no row any snapshot sees, so it stands whether
        or not the transaction that asked for it commits). True if anything was reclaimed."""
        plan = plan_prune(self.store.get(page_id), dead, thorough)
        if plan is None:
            return False
        with self.store.mtr(page_id):
            self.store.log(page_id, "heap_prune", *plan)
        return True


class ReusablePages:
    """One table's pages worth pruning for new rows: an in-memory free space map, a hint that is
    never logged. Both maps are bounded (the oldest entries go first)."""

    __slots__ = ("ended", "candidates")

    def __init__(self):
        self.ended: dict[int, int] = {}  # page -> versions ended there, while below the minimum
        self.candidates: list[int] = []  # pages with at least REUSE_ENDED_VERSIONS_MIN, oldest first

    def note(self, page_id: int, versions: int) -> None:
        if page_id in self.candidates:
            return
        count = self.ended.pop(page_id, 0) + versions
        if count >= REUSE_ENDED_VERSIONS_MIN:
            if len(self.candidates) >= REUSABLE_PAGES_PER_TABLE_MAX:
                self.candidates.pop(0)
            self.candidates.append(page_id)
            return
        if len(self.ended) >= ENDED_TALLY_PAGES_MAX:
            del self.ended[next(iter(self.ended))]
        self.ended[page_id] = count


def _fitting(rows: list[list], room: int) -> int:
    """How many of the first `rows` fit in `room` bytes together (each sized only if need be)."""
    count = 0
    for values in rows:
        room -= pages.tuple_bytes(values)
        if room < 0:
            break
        count += 1
    return count


def chain(page: pages.HeapPage, slot: int) -> Iterator[tuple[Tid, list]]:
    """The versions of the chain rooted at `slot` of `page` (see Heap.versions)."""
    tuples, links = page.tuples, page.links
    entry = tuples[slot]
    if entry.__class__ is int:
        if entry < 0:
            return  # a dead stub
        slot, entry = entry, tuples[entry]
    if entry is None:
        return
    while True:
        yield (page.page_id, slot), entry
        successor_slot = links.get(slot)
        if successor_slot is None or successor_slot >= len(tuples):
            return  # no successor, or a link to a slot pruning freed (pages older than that rule)
        successor = tuples[successor_slot]
        if successor.__class__ is not list or not entry[1] or successor[0] != entry[1]:
            return  # the update that linked it was undone or aborted
        slot, entry = successor_slot, successor


def is_root(page: pages.HeapPage, slot: int, entry) -> bool:
    """Does slot `slot` (holding `entry`) start a chain an index entry may name: a tuple that is no
    HOT successor, or a redirect? (Not a free slot, not a dead stub.)"""
    if entry.__class__ is list:
        return slot not in page.heap_only
    return entry is not None and entry >= 0


def has_ended_versions(page: pages.HeapPage) -> bool:
    """Does a version on `page` have a deleter (committed or not)? Pruning may reclaim it some day."""
    return any(entry.__class__ is list and entry[1] for entry in page.tuples)


def plan_prune(page: pages.HeapPage, dead: Callable[[int, int], bool],
               thorough: bool = False) -> tuple[list, list, list] | None:
    """The arguments of a heap_prune record for `page` (redirects, dead stubs, freed slots), or
    None if nothing can go. `dead(xmin, xmax)` says whether no snapshot, now or later, can see a
    version: its inserter aborted, or its deleter committed before every snapshot's xmin.

    Per chain, the leading versions that are dead go: a root that is a tuple or a redirect becomes a
    redirect to the first version still visible to someone, or a dead stub if none is left (index
    entries name the root); the heap-only ones among them are freed. Heap-only versions no chain
    reaches (their update was undone or aborted) are freed once dead. Unless `thorough` (VACUUM),
    a page where no version ended and no HOT version is held is passed over at once: the common
    case of a full page, and rows that an aborted transaction inserted are left to VACUUM."""
    tuples, heap_only = page.tuples, page.heap_only
    if not thorough and not heap_only and not has_ended_versions(page):
        return None
    redirects, stubs, freed = [], [], []
    reached: set[int] = set()
    links = page.links
    live_inserters: set[int] = set()  # xmins whose versions with no deleter are not dead: asked once
    for slot, entry in enumerate(tuples):  # is_root inlined: a full page is walked at every update
        if entry.__class__ is list:
            if slot in heap_only:
                continue
            if slot not in links:  # a row with one version: most of them
                xmin, xmax = entry[0], entry[1]
                if xmax or xmin not in live_inserters:
                    if dead(xmin, xmax):
                        stubs.append(slot)
                    elif not xmax:
                        live_inserters.add(xmin)
                continue
        elif entry is None or entry < 0:
            continue
        versions = [version_slot for (_, version_slot), _ in chain(page, slot)]
        reached.update(versions)
        gone = 0
        for version_slot in versions:
            xmin, xmax, _ = tuples[version_slot]
            if not dead(xmin, xmax):
                break
            gone += 1
        if not gone:
            continue
        freed.extend(version_slot for version_slot in versions[:gone] if version_slot in heap_only)
        if gone == len(versions):
            stubs.append(slot)
        elif entry.__class__ is list or entry != versions[gone]:
            redirects += [slot, versions[gone]]
    for slot in heap_only:
        entry = tuples[slot]
        if slot not in reached and entry.__class__ is list and dead(entry[0], entry[1]):
            freed.append(slot)
    if not (redirects or stubs or freed):
        return None
    return redirects, stubs, sorted(freed)
