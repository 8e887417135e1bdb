"""The volume's free pages: the pages of dropped relations, handed out again before the volume grows.

DROP TABLE, DROP INDEX and TRUNCATE end a catalog row version (and TRUNCATE makes a new one with
new pages), as any MVCC change; a transaction that rolls back leaves the old version live, and
one that created a relation and rolled back leaves a version whose inserter aborted. VACUUM
(`reclaim`) finds the catalog versions no snapshot can see any more, on the writer or a reader
(the prune horizon, as for heap pruning), and gives the pages only they reach (heap, B-trees,
sequences) to the free list; PageStore.allocate_page takes from it.

The free list is a FIFO of runs [first, count] in a chain of freelist pages, from the meta page's
`free_head` to its `free_tail`.

Invariants: a page id is in the free list at most once, and only once no catalog version that a
snapshot may see reaches it. The pages of a catalog version go to the list in the same MTR that
turns that version into a dead stub, so a crash frees them once or not at all, and a version
is never reclaimed twice. A page that another version still reaches, or that is a relation's
oid, is never freed.
"""

from __future__ import annotations

import collections
import logging
from typing import Callable, Iterable

from aurora_db.pages import FREELIST_RUNS_MAX
from compute_node.catalog import TableDef, decode_row
from compute_node.page_store import META_PAGE, MTR_RECORDS_MAX, PageStore

log = logging.getLogger(__name__)

# Records of one release: a push per freelist page filled, and per new freelist page its init,
# the old tail's link and the meta page's tail and growth; the stub and slack besides.
RELEASE_RECORDS_PER_FREELIST_PAGE = 5
RELEASE_FREELIST_PAGES_MAX = (MTR_RECORDS_MAX - 8) // RELEASE_RECORDS_PER_FREELIST_PAGE
RELEASE_RUNS_MAX = RELEASE_FREELIST_PAGES_MAX * FREELIST_RUNS_MAX  # a relation in more runs stays put

Root = tuple[str, int]  # ("table" | "btree" | "sequence", page id)


def runs_of(page_ids: Iterable[int]) -> list[list[int]]:
    """Sorted page ids as runs [first, count] of consecutive ids."""
    runs: list[list[int]] = []
    for page_id in sorted(page_ids):
        if runs and runs[-1][0] + runs[-1][1] == page_id:
            runs[-1][1] += 1
        else:
            runs.append([page_id, 1])
    return runs


def roots_of(table: TableDef) -> set[Root]:
    """What a catalog version's relation is made of: its table page (heap chain), index roots and
    sequences. A view has none."""
    if table.is_view:
        return set()
    roots: set[Root] = {("table", table.table_page_id)}
    roots.update(("btree", index.root_page_id) for index in table.indexes if index.root_page_id)
    roots.update(("sequence", column.sequence) for column in table.columns if column.sequence)
    return roots


def pages_of(store: PageStore, root: Root) -> list[int]:
    """Every page a root reaches (read through the cache, outside any MTR)."""
    kind, page_id = root
    if kind == "sequence":
        return [page_id]
    if kind == "btree":
        found, level = [], [page_id]
        while level:
            found += level
            nodes = [store.get(node_id) for node_id in level]
            level = [child for node in nodes if not node.is_leaf for child in node.vals]
        return found
    table = store.get(page_id)
    found = [page_id]
    heap_page = table.values["first_heap"]
    while heap_page:
        found.append(heap_page)
        heap_page = store.get(heap_page).next_page
    for index_root in table.values.get("indexes", {}).values():  # a primary key named only here
        if index_root:
            found += pages_of(store, ("btree", index_root))
    return found


def release(store: PageStore, runs: list[list[int]]) -> None:
    """Inside an MTR that pinned the meta page and the list's tail: append `runs` to the list,
    adding freelist pages (taken from the volume's growth, never from the list) as needed."""
    if not runs:
        return
    tail_id = store.get(META_PAGE).values.get("free_tail", 0)
    if not tail_id:
        tail_id = _grow_list(store, 0)
    pending = list(runs)
    while pending:
        room = FREELIST_RUNS_MAX - len(store.get(tail_id).runs)
        if not room:
            tail_id = _grow_list(store, tail_id)
            continue
        chunk, pending = pending[:room], pending[room:]
        store.log(tail_id, "freelist_push", chunk)


def _grow_list(store: PageStore, tail_id: int) -> int:
    meta = store.get(META_PAGE)
    page_id = meta.values["next_page_id"]
    store.log(META_PAGE, "meta_set", "next_page_id", page_id + 1)
    store.log(page_id, "freelist_init")
    if tail_id:
        store.log(tail_id, "freelist_set_next", page_id)
    else:
        store.log(META_PAGE, "meta_set", "free_head", page_id)
    store.log(META_PAGE, "meta_set", "free_tail", page_id)
    return page_id


def warm(store: PageStore) -> None:
    """Read the free list's head and tail into the cache (outside an MTR): allocate_page uses the
    list only while its head is cached, and release needs the tail."""
    values = store.get(META_PAGE).values
    for page_id in (values.get("free_head", 0), values.get("free_tail", 0)):
        if page_id:
            store.get(page_id)


def free_page_count(store: PageStore) -> int:
    """The pages the free list holds (walks it: for status and tests)."""
    count, page_id = 0, store.get(META_PAGE).values.get("free_head", 0)
    while page_id:
        page = store.get(page_id)
        count += sum(run[1] for run in page.runs)
        page_id = page.next_page
    return count


def reclaim(store: PageStore, catalog_heap, dead: Callable[[int, int], bool],
            forget: Callable[[set[Root]], None]) -> int:
    """Free the pages of every catalog version that `dead` says no snapshot can see, except what
    another version still reaches. Each version is reclaimed in its own MTR, with its stub.
    `forget` drops in-memory state keyed by the roots freed. Returns the pages freed."""
    versions = [(tid, xmin, xmax, decode_row(tid, values)) for tid, (xmin, xmax, values) in catalog_heap.scan()]
    # How many versions reach each root and carry each oid: what one version alone reaches is a
    # count of 1, its own; a relation keeps its oid through TRUNCATE, so a page that is another
    # version's oid stays too.
    reaching = collections.Counter(root for *_, table in versions for root in roots_of(table))
    oids = collections.Counter(table.oid for *_, table in versions)
    freed = 0
    for tid, xmin, xmax, table in versions:
        if not dead(xmin, xmax):
            continue
        freed_roots = {root for root in roots_of(table) if reaching[root] == 1}
        pages = set()
        for root in freed_roots:
            pages.update(pages_of(store, root))
        pages = {page_id for page_id in pages if oids[page_id] == (1 if page_id == table.oid else 0)}
        runs = runs_of(pages)
        if len(runs) > RELEASE_RUNS_MAX:
            log.warning("VACUUM: %s (%d pages in %d runs) is too scattered to free in one step; its pages stay",
                        table.name, len(pages), len(runs))
            continue
        warm(store)
        with store.mtr(META_PAGE, tid[0], *tail_pages(store)):
            release(store, runs)
            store.log(tid[0], "heap_prune", [], [tid[1]], [])
        reaching.subtract(roots_of(table))
        oids[table.oid] -= 1
        forget(freed_roots)
        freed += len(pages)
    return freed


def tail_pages(store: PageStore) -> list[int]:
    """The free list's tail, if any: a page an MTR that releases pages must pin (after warm)."""
    tail_id = store.get(META_PAGE).values.get("free_tail", 0)
    return [tail_id] if tail_id else []
