"""The engine: pages, catalog and transactions, one statement at a time.

Engine calls take turns (`_turn`), so pages need no latches. A restartable call (a query, a row
change, a commit: anything that can be given up leaving nothing behind) first runs right on the
event loop, which saves two thread hand-offs per statement. If it needs a page the cache lacks,
it raises PageMiss and undoes its changes; the page is read in the background, outside the turn,
so other sessions go on meanwhile, and the call runs again. If it would wait for anything else
(LSN room, cache room) or outgrows its inline budget, it runs again on the engine thread, where
waiting is allowed while the loop keeps the network (client sessions, storage links, acks) moving.
Every other call (DDL, startup) runs on the engine thread. A commit waits for VDL on the loop, so
commits of many sessions share acks (group commit).

Invariants: engine state is touched only inside a turn; a fresh volume is initialized by one
MTR, so VDL == 0 means "never initialized"; engine code never waits for another transaction: a
statement that meets a row lock undoes its own changes and raises RowLockWait, and its session
waits on the loop (transactions.py, write_plans.py).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from aurora_db.constants import ENGINE_INLINE_MISSES_MAX
from aurora_db.errors import DatabaseError, FeatureNotSupported, SyntaxError_, UndefinedTable
from aurora_db.quorum import DurabilityTracker
from compute_node import copy as copy_text
from compute_node import free_space
from compute_node import indexes as ix
from compute_node import introspection
from compute_node import sql_types as t
from compute_node.catalog import Catalog
from compute_node.explain import is_explain
from compute_node.executor import Context, Plan, plan_statement
from compute_node.heap import Heap
from compute_node.log_writer import LogWriter, WouldWait
from compute_node.page_store import META_PAGE, PageMiss, PageStore
from compute_node.plan_cache import PlanCache
from compute_node.recovery import RecoveredVolume
from compute_node.replica import ReplicaLog, ReplicaState, ReplicaTransactions
from compute_node.storage_client import StorageClient
from compute_node.transactions import RowLockWait, Transactions
from compute_node.write_plans import undo_statement

log = logging.getLogger(__name__)

PARSE_CACHE_ENTRIES_MAX = 1024


def check_result_type(plan: Plan, described: list) -> None:
    """A plan made again for a described statement must return the columns the client was told
    (names, types, type modifiers), or the statement fails before it runs: PostgreSQL's rule for
    a prepared statement whose tables changed."""
    shape = [(c.name, c.type_oid, c.type_modifier) for c in plan.columns or []]
    if shape != [(c.name, c.type_oid, c.type_modifier) for c in described]:
        raise FeatureNotSupported("cached plan must not change result type")


class StalePlan(Exception):
    """A reshaped statement's tables changed since it was prepared: prepare it again."""


class Turn:
    """Whose turn it is to run engine code: a FIFO mutex for coroutines of one loop. Taking a
    free turn never yields; a released turn passes straight to the first waiter, still held."""

    def __init__(self):
        self._held = False
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def __aenter__(self) -> None:
        if not self._held and not self._waiters:
            self._held = True
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.cancelled():
                if future in self._waiters:
                    self._waiters.remove(future)
            else:
                self._release()  # handed the turn, then cancelled before using it: pass it on
            raise

    async def __aexit__(self, *exc_info) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._held = False


class Engine:
    def __init__(self, loop: asyncio.AbstractEventLoop, client: StorageClient, volume: RecoveredVolume | None,
                 cache_pages: int, replica: ReplicaState | None = None):
        """A writer's engine after recovery (`volume`), or a reader's (`replica`: what it applied
        of the writer's redo stream; its engine makes no change at all)."""
        assert (volume is None) != (replica is None)
        self.loop = loop
        self.volume = volume
        self.replica = replica
        if replica is None:
            tracker = DurabilityTracker(vdl=volume.vdl, pg_tails=volume.pg_tails, lsn_floor=volume.lsn_floor)
            self.log_writer = LogWriter(loop, client, tracker)
        else:
            self.log_writer = ReplicaLog(replica)
        self.store = PageStore(loop, client, self.log_writer, cache_pages)
        self.transactions = Transactions(self.store) if replica is None else ReplicaTransactions(self.store, replica)
        self.catalog = Catalog(self.store, self.transactions)
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._turn = Turn()  # one engine call at a time, in arrival order
        self._parsed: collections.OrderedDict[str, exp.Expression] = collections.OrderedDict()
        self.plans = PlanCache()
        self.calls_inline = 0  # restartable calls finished on the loop / moved to the engine thread
        self.calls_moved = 0
        self.inline_misses = 0  # page misses of inline calls, each read in the background and retried

    async def call(self, fn, *args):
        """Run `fn` on the engine thread, where it may wait for storage."""
        async with self._turn:
            self.store.install_fetched()
            return await self._on_thread(fn, *args)

    async def _on_thread(self, fn, *args):
        """Inside a turn: run `fn` on the engine thread. If the caller is cancelled meanwhile, the
        turn is still held until `fn` has returned, so no other engine code runs beside it."""
        job = self.loop.run_in_executor(self._thread, fn, *args)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            await asyncio.wait([job])
            raise

    async def call_restartable(self, fn, *args):
        """Run `fn` on the loop if it finishes there without waiting, else on the engine thread.

        `fn` must leave nothing behind when it raises WouldWait: it only reads, makes its changes
        in one MTR that waits before its first record, or undoes them (`_undoable`). A page miss
        does not hold the turn while storage answers: the page is read in the background, and
        `fn` runs again, up to ENGINE_INLINE_MISSES_MAX times (a scan of a cold table then moves
        to the engine thread, which reads page after page in one turn)."""
        misses = 0
        while True:
            async with self._turn:
                self.store.install_fetched()
                fetch = None
                if self.store.begin_inline():
                    sequences = self.catalog.sequences.mark()
                    try:
                        result = fn(*args)
                        self.calls_inline += 1
                        return result
                    except PageMiss as miss:
                        self.catalog.sequences.rewind(sequences)
                        if misses < ENGINE_INLINE_MISSES_MAX:
                            fetch = self.store.start_fetch(miss.page_id)
                    except WouldWait:
                        self.catalog.sequences.rewind(sequences)
                    finally:
                        self.store.end_inline()
                if fetch is None:
                    self.calls_moved += 1
                    return await self._on_thread(fn, *args)
            misses += 1
            self.inline_misses += 1
            await asyncio.wait([fetch])  # its failure, if any, is met again by the retry

    def shutdown(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    @property
    def read_only(self) -> bool:
        return self.replica is not None

    # --- a reader's redo stream (loop thread) ----------------------------------------------------

    async def restart_stream(self, replica: ReplicaState) -> None:
        """A reader attached (again) to a writer: start from its hello, with an empty cache."""
        async with self._turn:
            self.store.forget_all()
            self.transactions.forget_statuses()  # a new writer may have decided differently (recovery)
            self.catalog.forget()
            self.replica = self.log_writer.state = self.transactions.state = replica

    async def apply_stream(self, frame: dict, now_ms: float) -> None:
        """A state frame: apply the records it makes durable and take its snapshot, in one turn,
        so no statement sees the one without the other."""
        async with self._turn:
            self.store.install_fetched()
            self.store.apply_replicated(self.replica.on_state(frame, now_ms))

    # --- engine thread ------------------------------------------------------------------------

    def open_volume(self) -> None:
        if self.volume.vdl == 0:
            log.info("empty volume: initializing")
            with self.store.mtr():
                self.store.log_bootstrap()
                self.transactions.log_bootstrap()
                self.catalog.log_bootstrap()
        self.transactions.recover()
        free_space.warm(self.store)

    def parse(self, sql: str) -> exp.Expression:
        node = self._parsed.get(sql)
        if node is not None:
            self._parsed.move_to_end(sql)
            return node
        try:
            nodes = sqlglot.parse(sql, read="postgres")
        except (ParseError, TokenError) as error:
            raise SyntaxError_(f"syntax error: {str(error).splitlines()[0][:200]}") from None
        nodes = [n for n in nodes if n is not None]
        if len(nodes) != 1:
            raise SyntaxError_("cannot insert multiple commands into a prepared statement")
        node = nodes[0]
        if isinstance(node, exp.Command) and not is_explain(node):
            raise FeatureNotSupported(f"statement {node.this} is not supported yet")
        self._parsed[sql] = node
        if len(self._parsed) > PARSE_CACHE_ENTRIES_MAX:
            self._parsed.popitem(last=False)
        return node

    def prepare(self, sql: str, param_types: list[str], xid: int | None, reshape: bool = True
                ) -> tuple[exp.Expression, Plan, list[str], list]:
        """Parse and plan; returns (node, plan, resolved parameter types, bound values). A
        statement without parameters of its own that has literals runs as its cached template
        (plan_cache.py) unless `reshape` is false: then the bound values are its literals, to be
        passed as the first parameters of every run."""
        snapshot = self.transactions.snapshot()
        tables = self.catalog.tables(snapshot, xid)
        plan, is_current = self._planner_for(tables)
        if not param_types and reshape:
            try:
                found = self.plans.lookup(sql, self.parse, plan, is_current)
            except DatabaseError:
                found = None  # the template does not plan: the statement as written decides (and errs)
            if found is not None:
                entry, texts = found
                values = [t.parse_text(text, type_name) for text, type_name in zip(texts, entry.param_types)]
                return entry.node, entry.plan, entry.param_types, values
        entry = self.plans.lookup_text(sql, param_types, self.parse, plan, is_current)
        return entry.node, entry.plan, list(entry.param_types), []

    @staticmethod
    def _planner_for(tables: dict):
        """plan(node, types) -> (plan, resolved types), and is_current(plan): planned from `tables`."""
        def plan(node, types):
            types = list(types)
            return plan_statement(node, tables, types), types

        def is_current(plan_made) -> bool:
            return all((tables[name].tid if name in tables else None) == tid for name, tid in plan_made.tables.items())

        return plan, is_current

    def run(self, node: exp.Expression, plan: Plan, param_types: list[str], params: list, session,
            autocommit: bool, reshaped: bool = False, described: list | None = None
            ) -> tuple[Plan, object, int | None]:
        """Run a statement; replan first if a table it was planned against changed.

        With `autocommit`, a statement that wrote also logs its commit record here, so the
        statement's records and its commit record travel to storage together; returns
        (plan, result, commit LSN or None). A `reshaped` statement (a cached template with its
        literals bound) whose plan went stale raises StalePlan: its literals were typed for the
        old tables, so the session prepares it again from its text, as written (a cached plan is
        checked against a fresh snapshot, which under REPEATABLE READ may not be the session's).
        `described`: the result columns a client was told (an extended-protocol statement); a new
        plan must give the same ones (check_result_type)."""
        snapshot = session.statement_snapshot(self.transactions)
        replan, is_current = self._planner_for(self.catalog.tables(snapshot, session.xid))
        if not is_current(plan):
            if reshaped:
                raise StalePlan()
            plan, _ = replan(node, param_types)
            if described is not None:
                check_result_type(plan, described)
        context = Context(self.store, self.transactions, self.catalog, snapshot, session, params, session.settings)
        result, commit_lsn = self._undoable(session, self._run_and_commit, plan, context, autocommit)
        return plan, result, commit_lsn

    def _run_and_commit(self, plan: Plan, context: Context, autocommit: bool) -> tuple[object, int | None]:
        result = plan.run(context)
        xid = context.session.xid
        return result, self.transactions.write_commit(xid) if autocommit and xid is not None else None

    def copy_target(self, spec: copy_text.CopySpec, session) -> copy_text.CopyTarget:
        """COPY FROM STDIN: the table and columns its rows go to, as the session's snapshot sees them."""
        return copy_text.resolve_target(spec, self.catalog.tables(session.statement_snapshot(self.transactions),
                                                                  session.xid))

    def copy_rows(self, target: copy_text.CopyTarget, spec: copy_text.CopySpec, lines: list[tuple[int, bytes]],
                  session) -> int:
        """One batch of COPY FROM STDIN rows, inserted in the session's transaction; returns the count."""
        context = Context(self.store, self.transactions, self.catalog, session.statement_snapshot(self.transactions),
                          session, [], session.settings)
        return self._undoable(session, copy_text.insert_lines, context, target, spec, lines)

    def _undoable(self, session, fn, *args):
        """Run a statement (or a COPY batch) that may meet a row lock, or be given up inline: then
        undo what it changed and let RowLockWait reach the session, which waits on the loop and
        runs it again, or WouldWait reach call_restartable, which runs it on the engine thread.
        A commit record, once made, is never undone: nothing after it can raise either."""
        session.statement_undo = []
        sequences = self.catalog.sequences.mark()
        try:
            return fn(*args)
        except (RowLockWait, WouldWait):
            self.store.end_inline()  # the undo never gives up half-way
            undo_statement(self.store, session.statement_undo)
            self.catalog.sequences.rewind(sequences)
            raise
        finally:
            session.statement_undo = None

    def run_canned(self, canned: introspection.Canned, params: list, session) -> list[tuple]:
        """A driver's catalog query that the session recognized (introspection.py)."""
        tables = self.catalog.tables(self.transactions.snapshot(), session.xid)
        return canned.answer(params, tables, session.settings)

    def vacuum(self, names: list[str]) -> int:
        """VACUUM of the tables named (every table if none): see heap.Heap.vacuum. Then, whatever
        was named, the pages of dropped relations go to the free list (free_space.reclaim).
        Returns the dead stubs freed. Raises 42P01 for a name that is no table."""
        tables = self.catalog.tables(self.transactions.snapshot(), None)
        if names:
            missing = [name for name in names if name not in tables or tables[name].is_view]
            if missing:
                raise UndefinedTable(f'relation "{missing[0]}" does not exist')
        chosen = [tables[name] for name in names] if names else [table for table in tables.values() if not table.is_view]
        dead = self.transactions.dead_to_all()
        freed = 0
        for table in chosen:
            trees = [ix.tree_of(self.store, table, index) for index in table.indexes]
            freed += Heap(self.store, table.table_page_id).vacuum(dead, trees)
        free_space.reclaim(self.store, self.catalog.heap, dead, self._forget_relation)
        return freed

    def _forget_relation(self, roots: set[free_space.Root]) -> None:
        """What is remembered in memory by the page ids of the heaps and sequences freed."""
        for kind, page_id in roots:
            if kind == "table":
                self.store.reusable_pages.pop(page_id, None)
            elif kind == "sequence":
                self.catalog.sequences.forget(page_id)

    def begin_xid(self) -> int:
        return self.transactions.begin()

    def write_commit(self, xid: int) -> int:
        return self.transactions.write_commit(xid)

    def write_abort(self, xid: int) -> None:
        self.transactions.write_abort(xid)

    def status(self) -> dict:
        """For the admin port; read from the loop thread (plain reads of counters)."""
        common = {"cache_pages": len(self.store.cache), "cache_hits": self.store.cache.hits,
                  "cache_misses": self.store.cache.misses,
                  "engine_calls_inline": self.calls_inline, "engine_calls_moved": self.calls_moved,
                  "engine_inline_misses": self.inline_misses,
                  "plan_cache_hits": self.plans.hits, "plan_cache_misses": self.plans.misses}
        replica = self.replica
        if replica is not None:
            return {**common, "epoch": replica.epoch, "vdl": replica.applied_lsn, "applied_lsn": replica.applied_lsn,
                    "replica_lag_ms": replica.last_lag_ms, "replica_lag_p50_ms": replica.lag_percentile_ms(0.5),
                    "replica_lag_p99_ms": replica.lag_percentile_ms(0.99), "replica_lag_lsn": replica.lag_lsn,
                    "replica_lag_bytes": replica.lag_bytes}
        tracker = self.log_writer.tracker
        client = self.log_writer.client
        meta = self.store.cache.peek(META_PAGE)
        return {**common, "volume_pages": meta.values["next_page_id"] if meta is not None else None, "epoch": self.volume.epoch, "vdl": tracker.vdl, "applied_lsn": tracker.vdl,
                "vcl": tracker.vcl, "lsn": tracker.last_lsn, "active_transactions": len(self.transactions.active),
                "records_made": self.store.records_made, "storage_bytes_sent": client.bytes_sent,
                "storage_requests_sent": client.requests_sent,
                "pgcl": {str(pg): lsn for pg, lsn in tracker.pgcl.items()}}
