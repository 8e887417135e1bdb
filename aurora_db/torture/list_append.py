"""Transactional anomalies of a list-append history (history.py), found the way Elle finds them:
each key's version order is read off the longest list read, then a dependency graph of ww, wr, rw
and realtime (rt) edges between transactions is searched for cycles (Adya's G0, G1c, G-single, G2),
alongside the anomalies a single read shows (G1a, G1b, internal, garbage and duplicate elements).

Invariants: appended values are unique per key; a "fail" transaction appended nothing; the graph's
nodes are the ok transactions and the "info" ones whose appends some read observed; every cycle
reported is simple, goes through the edge its anomaly is named for, and is named by the edges it
is made of.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import networkx as nx

from aurora_db.torture.history import FAIL, INFO, OK, Operation, operations

TXN = "txn"
APPEND, READ = "append", "r"
WW, WR, RW, RT = "ww", "wr", "rw", "rt"
EDGE_PREFERENCE = (WW, WR, RW, RT)  # an edge of several types is shown as the first that fits

ANOMALY_EXAMPLES_MAX = 8  # per anomaly; anomaly_counts has them all

# The database is a single-writer volume: a transaction started after another's commit was
# acknowledged must see it, so the realtime variants are forbidden too; write skew (G2) is not.
FORBIDDEN_BY_SNAPSHOT_ISOLATION = frozenset({
    "G0", "G1a", "G1b", "G1c", "G-single", "internal", "incompatible-order", "duplicate-elements",
    "garbage-read", "G0-realtime", "G1c-realtime", "G-single-realtime"})


@dataclasses.dataclass
class ListAppendResult:
    """`anomalies` maps a name to at most ANOMALY_EXAMPLES_MAX examples; a cycle's example is
    {"cycle": [{"op", "edge", ...}, ...]} where each step's edge leads to the next step's op (the
    last to the first). `anomaly_counts` counts, for a cycle anomaly, the strongly connected
    components that show one, for the others every occurrence. `fatal` names the anomalies found
    that the checked isolation forbids."""
    valid: bool
    anomalies: dict[str, list[dict]]
    anomaly_counts: dict[str, int]
    fatal: list[str]
    txns: dict[str, int]  # transactions by outcome: ok, fail, info

    def summary(self) -> dict:
        return {"valid": self.valid, "txns": self.txns, "fatal": self.fatal,
                "anomaly_counts": self.anomaly_counts, "anomalies": self.anomalies}


def check_list_append(events: list[dict],
                      forbidden: frozenset[str] = FORBIDDEN_BY_SNAPSHOT_ISOLATION) -> ListAppendResult:
    txns = _Txns.of(events)
    findings = _Findings()
    reads = _reads_by_key(txns)
    _check_orders(txns, reads, findings)
    _check_elements(txns, reads, findings)
    _check_intermediate_reads(txns, findings)
    for op in txns.by_index.values():
        if op.type == OK:
            _check_internal(txns, op, findings)
    orders = _version_orders(reads)
    graph = _dependency_graph(txns, reads, orders)
    _add_realtime_edges(graph, txns)
    _find_cycles(graph, txns, findings)
    fatal = sorted(set(findings.counts) & forbidden)
    tally = {OK: 0, FAIL: 0, INFO: 0}
    for op in txns.by_index.values():
        tally[op.type] += 1
    return ListAppendResult(not fatal, findings.examples, findings.counts, fatal, tally)


@dataclasses.dataclass
class _Findings:
    examples: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, name: str, example: dict) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        examples = self.examples.setdefault(name, [])
        if len(examples) < ANOMALY_EXAMPLES_MAX:
            examples.append(example)


@dataclasses.dataclass(frozen=True, slots=True)
class _Read:
    txn: int
    key: Any
    elements: tuple


@dataclasses.dataclass
class _Txns:
    """Every transaction by invoke index, who appended each (key, element), each transaction's
    last append to each key, and the reads of the ok transactions in history order."""
    by_index: dict[int, Operation]
    writer: dict[tuple[Any, Any], int]
    last_append: dict[tuple[int, Any], Any]
    reads: list[_Read]

    @classmethod
    def of(cls, events: list[dict]) -> _Txns:
        txns = cls({}, {}, {}, [])
        for op in operations(events):
            if op.f != TXN:
                continue  # not a transaction: a nemesis's operation, say
            txns.by_index[op.invoke_index] = op
            for function, key, element in op.invoke_value:
                if function == APPEND:
                    if (key, element) in txns.writer:
                        raise ValueError(f"event {op.invoke_index} appends {element!r} to {key!r} again")
                    txns.writer[key, element] = op.invoke_index
                    txns.last_append[op.invoke_index, key] = element
            if op.type == OK:
                txns.reads.extend(_Read(op.invoke_index, key, tuple(elements))
                                  for function, key, elements in op.value if function == READ)
        return txns

    def readable(self, index: int) -> dict:
        op = self.by_index[index]
        return {"op": index, "process": op.process, "type": op.type,
                "txn": op.value if op.type == OK else op.invoke_value}


@dataclasses.dataclass
class _KeyReads:
    """The ok reads of one key: the longest, and those that are not a prefix of it."""
    longest: _Read
    incompatible: list[_Read]

    def covering(self) -> list[_Read]:
        """Reads that hold, between them, every element any read of the key holds."""
        return [self.longest, *self.incompatible]


def _reads_by_key(txns: _Txns) -> dict[Any, _KeyReads]:
    by_key: dict[Any, list[_Read]] = {}
    for read in txns.reads:
        by_key.setdefault(read.key, []).append(read)
    grouped = {}
    for key, reads in by_key.items():
        longest = max(reads, key=lambda read: len(read.elements))
        grouped[key] = _KeyReads(longest, [read for read in reads
                                           if read.elements != longest.elements[:len(read.elements)]])
    return grouped


def _check_orders(txns: _Txns, reads: dict[Any, _KeyReads], findings: _Findings) -> None:
    for key, group in reads.items():
        for read in group.incompatible:
            findings.add("incompatible-order", {
                "key": key, "read": {**txns.readable(read.txn), "elements": list(read.elements)},
                "longest_read": {**txns.readable(group.longest.txn), "elements": list(group.longest.elements)}})


def _check_elements(txns: _Txns, reads: dict[Any, _KeyReads], findings: _Findings) -> None:
    """duplicate-elements, garbage-read and G1a (aborted read), each shown by the first covering
    read of the key to show it."""
    for key, group in reads.items():
        for read in group.covering():
            shown = {**txns.readable(read.txn), "key": key}
            if len(set(read.elements)) != len(read.elements):
                findings.add("duplicate-elements", {**shown, "read": list(read.elements)})
            for element in read.elements:
                writer = txns.writer.get((key, element))
                if writer is None:
                    findings.add("garbage-read", {**shown, "element": element})
                elif txns.by_index[writer].type == FAIL:
                    findings.add("G1a", {**shown, "element": element, "writer": txns.readable(writer)})


def _check_intermediate_reads(txns: _Txns, findings: _Findings) -> None:
    """G1b: a read ends with an element that another transaction appended to the key, and not last."""
    for read in txns.reads:
        if not read.elements:
            continue
        last = read.elements[-1]
        writer = txns.writer.get((read.key, last))
        if (writer is not None and writer != read.txn and txns.by_index[writer].type != FAIL
                and txns.last_append[writer, read.key] != last):
            findings.add("G1b", {**txns.readable(read.txn), "key": read.key, "element": last,
                                 "writer": txns.readable(writer)})


def _check_internal(txns: _Txns, op: Operation, findings: _Findings) -> None:
    """Within a transaction, a read shows the transaction's own earlier read of the key followed by
    its appends since, or, with no earlier read, ends with all its appends so far."""
    known: dict[Any, list] = {}  # key -> the list as this transaction last read it, then its appends since
    own: dict[Any, list] = {}  # key -> its appends before any read of the key
    for function, key, elements in op.value:
        if function == APPEND:
            (known[key] if key in known else own.setdefault(key, [])).append(elements)
            continue
        elements = list(elements)
        if key in known:
            consistent, expected = elements == known[key], known[key]
        else:
            appended = own.get(key, [])
            consistent, expected = elements[len(elements) - len(appended):] == appended, ["...", *appended]
        if not consistent:
            findings.add("internal", {**txns.readable(op.invoke_index), "key": key, "read": elements,
                                      "expected": expected})
        known[key] = elements


def _version_orders(reads: dict[Any, _KeyReads]) -> dict[Any, tuple]:
    """Each key's order of elements: its longest read, when every read of it is a prefix of that
    one and no element repeats; otherwise the key has no order to infer ww and rw edges from."""
    return {key: group.longest.elements for key, group in reads.items()
            if not group.incompatible and len(set(group.longest.elements)) == len(group.longest.elements)}


def _add_edge(graph: nx.DiGraph, source: int, target: int, type_: str, key: Any) -> None:
    """Edges carry `why`: edge type -> the key that shows it (None for realtime)."""
    if source == target:
        return
    if graph.has_edge(source, target):
        graph.edges[source, target]["why"].setdefault(type_, key)
    else:
        graph.add_edge(source, target, why={type_: key})


def _dependency_graph(txns: _Txns, reads: dict[Any, _KeyReads], orders: dict[Any, tuple]) -> nx.DiGraph:
    def committed_writer(key: Any, element: Any) -> int | None:
        writer = txns.writer.get((key, element))
        return None if writer is None or txns.by_index[writer].type == FAIL else writer

    graph = nx.DiGraph()
    graph.add_nodes_from(index for index, op in txns.by_index.items() if op.type == OK)
    graph.add_nodes_from(writer for key, group in reads.items() for read in group.covering()
                         for element in read.elements if (writer := committed_writer(key, element)) is not None)

    for key, order in orders.items():
        writers = [committed_writer(key, element) for element in order]
        for earlier, later in zip(writers, writers[1:]):
            if earlier is not None and later is not None:
                _add_edge(graph, earlier, later, WW, key)
    for read in txns.reads:
        if read.elements:
            writer = committed_writer(read.key, read.elements[-1])
            if writer is not None:
                _add_edge(graph, writer, read.txn, WR, read.key)
        order = orders.get(read.key, ())
        if len(read.elements) < len(order):
            writer = committed_writer(read.key, order[len(read.elements)])
            if writer is not None:
                _add_edge(graph, read.txn, writer, RW, read.key)
    return graph


def _add_realtime_edges(graph: nx.DiGraph, txns: _Txns) -> None:
    """T1 -> T2 when T1's ok came before T2's invoke (event order), reduced: a transaction gets
    edges only from the frontier, the completed transactions that no completed transaction follows
    in real time yet; the others reach it through the frontier."""
    moments = []  # (event index, transaction): its invoke, then its completion if ok
    for index in graph.nodes:
        op = txns.by_index[index]
        moments.append((op.invoke_index, index))
        if op.type == OK:
            moments.append((op.complete_index, index))
    moments.sort()
    frontier: set[int] = set()
    predecessors: dict[int, list[int]] = {}
    for event_index, index in moments:
        if event_index == txns.by_index[index].invoke_index:
            predecessors[index] = sorted(frontier)
            for predecessor in predecessors[index]:
                _add_edge(graph, predecessor, index, RT, None)
        else:
            frontier.difference_update(predecessors.pop(index))
            frontier.add(index)


@dataclasses.dataclass(frozen=True)
class _CycleSearch:
    """One cycle per strongly connected component of the `special` + `free` edges: a `special`
    edge a -> b of no other free type, closed by a path b -> a of `free` edges; not for a special
    edge that a path of `unless` edges closes already, nor in a component holding a cycle of an
    anomaly in `after`."""
    name: str
    special: str
    free: frozenset[str]
    unless: frozenset[str] = frozenset()
    after: tuple[str, ...] = ()


CYCLE_SEARCHES = (
    _CycleSearch("G0", WW, frozenset({WW})),
    _CycleSearch("G1c", WR, frozenset({WW, WR})),
    _CycleSearch("G-single", RW, frozenset({WW, WR})),
    _CycleSearch("G2", RW, frozenset({WW, WR, RW}), after=("G-single",)),
    _CycleSearch("G0-realtime", RT, frozenset({WW, RT})),
    _CycleSearch("G1c-realtime", RT, frozenset({WW, WR, RT}), after=("G0-realtime",)),
    _CycleSearch("G-single-realtime", RW, frozenset({WW, WR, RT}), unless=frozenset({WW, WR})),
    _CycleSearch("G2-realtime", RT, frozenset({WW, WR, RW, RT}),
                 after=("G2", "G-single", "G0-realtime", "G1c-realtime", "G-single-realtime")),
)
# Each search finds cycles of exactly its name, edges shown as the first type of EDGE_PREFERENCE
# they may be: a G1c-realtime component holds no ww + rt cycle through an rt edge, so its cycle has
# a wr edge; a G2-realtime cycle with under two rw edges would have been found by a search it comes
# after.


def _find_cycles(graph: nx.DiGraph, txns: _Txns, findings: _Findings) -> None:
    typed = functools.cache(lambda types: _typed(graph, types))  # the searches share edge type sets
    cycle_nodes: dict[str, set[int]] = {}
    for search in CYCLE_SEARCHES:
        cycle_nodes[search.name] = set()
        done = set().union(*(cycle_nodes[name] for name in search.after))
        for cycle in _cycles(graph, typed, search, done):
            cycle_nodes[search.name].update(node for node, _ in cycle)
            findings.add(search.name, {"cycle": [_shown_step(graph, txns, node, type_, cycle[(i + 1) % len(cycle)][0])
                                                 for i, (node, type_) in enumerate(cycle)]})


def _shown_step(graph: nx.DiGraph, txns: _Txns, node: int, type_: str, next_node: int) -> dict:
    step = {**txns.readable(node), "edge": type_}
    if type_ != RT:
        step["key"] = graph.edges[node, next_node]["why"][type_]
    return step


def _typed(graph: nx.DiGraph, types: frozenset[str]) -> nx.DiGraph:
    """The graph with only the edges of one of `types`."""
    typed = nx.DiGraph()
    typed.add_nodes_from(graph)
    typed.add_edges_from((a, b) for a, b, why in graph.edges(data="why") if not types.isdisjoint(why))
    return typed


def _cycles(graph: nx.DiGraph, typed: Callable[[frozenset[str]], nx.DiGraph], search: _CycleSearch,
            done: set[int]) -> list[list[tuple[int, str]]]:
    """Cycles as [(node, type of its edge to the next node)], one per component."""
    free = typed(search.free)
    unless = typed(search.unless) if search.unless else None
    found = []
    for component in nx.strongly_connected_components(typed(search.free | {search.special})):
        if len(component) < 2 or not done.isdisjoint(component):
            continue
        free_within = free.subgraph(component)
        closes = _always if search.special in search.free else _reachability(free_within)
        excluded = _reachability(unless.subgraph(component)) if unless is not None else _never
        for a, b in _special_edges(graph, component, search):
            if closes(b, a) and not excluded(b, a):
                path = nx.shortest_path(free_within, b, a)
                found.append([(a, search.special)] + [(node, _edge_type(graph, node, successor, search.free))
                                                      for node, successor in zip(path, path[1:])])
                break
    return found


def _special_edges(graph: nx.DiGraph, component: set[int], search: _CycleSearch) -> list[tuple[int, int]]:
    """The component's edges of the special type and of no other free type: a cycle through one
    of those needs it."""
    others = search.free - {search.special}
    return [(a, b) for a in sorted(component) for b, edge in graph.adj[a].items()
            if b in component and search.special in edge["why"] and others.isdisjoint(edge["why"])]


def _edge_type(graph: nx.DiGraph, source: int, target: int, allowed: frozenset[str]) -> str:
    why = graph.edges[source, target]["why"]
    return next(type_ for type_ in EDGE_PREFERENCE if type_ in allowed and type_ in why)


def _always(source: int, target: int) -> bool:
    return True


def _never(source: int, target: int) -> bool:
    return False


def _reachability(graph: nx.DiGraph) -> Callable[[int, int], bool]:
    """Whether a path leads from one node to another: a bitset of the components each component
    of the condensation reaches, built from the sinks up."""
    condensed = nx.condensation(graph)
    component_of = condensed.graph["mapping"]
    reached: dict[int, int] = {}
    for component in reversed(list(nx.topological_sort(condensed))):
        bits = 1 << component
        for successor in condensed.successors(component):
            bits |= reached[successor]
        reached[component] = bits
    return lambda source, target: bool(reached[component_of[source]] >> component_of[target] & 1)
