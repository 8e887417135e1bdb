"""Linearizability of per-key registers: a history (history.py) of read, write and cas operations,
checked against a register per key that starts at None.

Each key is checked on its own (P-compositionality), by the depth-first search of Wing & Gong with
Lowe's memo of (linearized set, register value) states, over a doubly linked list of call and
return entries in time order, as porcupine does it. Invariants: a "fail" operation and an "info"
read have no effect and constrain nothing; an "info" write or cas never returns: it may take effect
at any time after its invocation, or never, and the search places one only just before an operation
that returned and needs its value; a key's search stops after SEARCH_STEPS_MAX steps with the
verdict None (unknown) rather than hang.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Iterator

from aurora_db.torture.history import FAIL, INFO, Operation, operations

READ, WRITE, CAS = "read", "write", "cas"
REGISTER_FUNCTIONS = frozenset({READ, WRITE, CAS})

SEARCH_STEPS_MAX = 1_000_000  # per key: moves tried and dead ends met
COUNTEREXAMPLES_MAX = 3  # invalid keys that summary() shows
PREFIX_TAIL_OPS_MAX = 8  # the end of a key's longest linearizable prefix that summary() shows
UNPLACED_OPS_MAX = 8
assert COUNTEREXAMPLES_MAX > 0 and PREFIX_TAIL_OPS_MAX > 0 and UNPLACED_OPS_MAX > 0


@dataclasses.dataclass(frozen=True, slots=True)
class _RegisterOp:
    """One operation on one key. `argument` is the value read (read), written (write), or the
    pair (expected, new) (cas); an open-ended operation is an "info" write or cas."""
    f: str
    argument: Any
    open_ended: bool
    operation: Operation


@dataclasses.dataclass
class KeyResult:
    """The verdict on one key: True, False, or None when the search ran out of steps. Unless the
    key is valid, `prefix` is the longest linearizable prefix found, in linearization order,
    `state` the register's value after it, and `unplaced` the operations that could have come next,
    none of which leads to a linearization (the last of them had returned already)."""
    key: Any
    valid: bool | None
    operations: int
    search_steps: int
    prefix: list[dict] = dataclasses.field(default_factory=list)
    state: Any = None
    unplaced: list[dict] = dataclasses.field(default_factory=list)

    def counterexample(self) -> dict:
        return {"key": self.key, "valid": self.valid, "operations": self.operations,
                "search_steps": self.search_steps, "prefix_length": len(self.prefix),
                "prefix_tail": self.prefix[-PREFIX_TAIL_OPS_MAX:], "state": self.state,
                "unplaced": self.unplaced[:UNPLACED_OPS_MAX]}


@dataclasses.dataclass
class LinearizabilityResult:
    """False if any key is not linearizable, None if none is invalid but some is unknown, else True."""
    valid: bool | None
    keys: dict[Any, KeyResult]

    def summary(self) -> dict:
        invalid = [result for result in self.keys.values() if result.valid is False]
        return {"valid": self.valid, "keys_checked": len(self.keys), "keys_invalid": len(invalid),
                "keys_unknown": [result.key for result in self.keys.values() if result.valid is None],
                "counterexamples": [result.counterexample() for result in invalid[:COUNTEREXAMPLES_MAX]]}


def check_registers(events: list[dict], search_steps_max: int = SEARCH_STEPS_MAX) -> LinearizabilityResult:
    keys = {key: _check_key(key, ops, search_steps_max) for key, ops in _ops_by_key(events).items()}
    return LinearizabilityResult(_verdict(result.valid for result in keys.values()), keys)


def _verdict(verdicts: Iterable[bool | None]) -> bool | None:
    verdicts = set(verdicts)
    if False in verdicts:
        return False
    return None if None in verdicts else True


def _ops_by_key(events: list[dict]) -> dict[Any, list[_RegisterOp]]:
    """The operations that can have had an effect, by key, in invocation order. Operations of
    other functions (a nemesis's, say) are not the registers' and are left out."""
    by_key: dict[Any, list[_RegisterOp]] = {}
    for operation in operations(events):
        if operation.f not in REGISTER_FUNCTIONS or operation.type == FAIL:
            continue
        if operation.type == INFO and operation.f == READ:
            continue
        key, argument = operation.value if operation.f == READ else operation.invoke_value
        op = _RegisterOp(operation.f, _frozen(argument), operation.type == INFO, operation)
        by_key.setdefault(_frozen(key), []).append(op)
    return by_key


def _frozen(value: Any) -> Any:
    """A hashable equal of a JSON value: lists become tuples."""
    if isinstance(value, list):
        return tuple(_frozen(item) for item in value)
    return value


def _step(op: _RegisterOp, state: Any) -> tuple[bool, Any]:
    """Whether `op` may take effect on a register holding `state`, and the value it leaves then.
    (An open-ended cas that found another value changed nothing: it is as if it never happened.)"""
    if op.f == READ:
        return op.argument == state, state
    if op.f == WRITE:
        return True, op.argument
    expected, new = op.argument
    return state == expected, new


def _readable(op: _RegisterOp) -> dict:
    operation = op.operation
    return {"process": operation.process, "type": operation.type, "f": operation.f,
            "value": operation.value if operation.f == READ else operation.invoke_value,
            "invoke_index": operation.invoke_index, "complete_index": operation.complete_index}


def _check_key(key: Any, ops: list[_RegisterOp], search_steps_max: int) -> KeyResult:
    search = _Search(ops)
    valid = search.run(search_steps_max)
    result = KeyResult(key, valid, len(ops), search.steps)
    if valid is not True:
        result.prefix = [_readable(ops[i]) for i in search.best_prefix]
        result.state = search.best_state
        result.unplaced = [_readable(ops[i]) for i in search.best_unplaced]
    return result


class _Links:
    """A doubly linked list of the nodes 1..count between the sentinels 0 and count + 1. Invariant:
    lifted nodes are put back in the reverse order of their lifting (dancing links)."""

    def __init__(self, count: int):
        self.tail = count + 1
        self.next = list(range(1, count + 2)) + [self.tail]
        self.prev = [0] + list(range(count + 1))

    def first(self) -> int:
        return self.next[0]

    def lift(self, node: int) -> None:
        self.next[self.prev[node]] = self.next[node]
        self.prev[self.next[node]] = self.prev[node]

    def unlift(self, node: int) -> None:
        self.next[self.prev[node]] = node
        self.prev[self.next[node]] = node


# A move places an operation that returned (its call node), after a chain of open-ended ones (theirs).
Move = tuple[int, tuple[int, ...]]


@dataclasses.dataclass(slots=True)
class _Level:
    """One depth of the search: the register's value, the calls that may take effect next (those
    before the first return, `blocking`), the moves left to try, and the move taken."""
    state: Any
    calls: list[int]
    open_calls: list[int]
    blocking: int
    moves: Iterator[Move]
    taken: Move | None = None


class _Search:
    """Lowe's search over one key's operations: entries are the calls and returns, sorted by
    (time, event index), an open-ended operation returning at +infinity; the operations that may
    take effect next are those called before the first return.

    An open-ended operation is never required, so it is placed only where of use: in a chain of
    them, each changing the value, that makes legal the operation that returned placed right after
    it. Any linearization becomes one of that form by dropping the open-ended operations of no use.
    Memo: a state (placed, open-ended placed, value) is pruned once one with a subset of those
    open-ended operations was visited, as it can do nothing that one could not."""

    def __init__(self, ops: list[_RegisterOp]):
        self.ops = ops
        entries = []  # (time, event index, op, is a call)
        for i, op in enumerate(ops):
            operation = op.operation
            entries.append((operation.invoke_ns, operation.invoke_index, i, True))
            if op.open_ended:
                entries.append((math.inf, operation.invoke_index, i, False))
            else:
                entries.append((operation.complete_ns, operation.complete_index, i, False))
        entries.sort()
        self.links = _Links(len(entries))
        self.op_of = [-1] + [entry[2] for entry in entries] + [-1]
        self.is_call = [False] + [entry[3] for entry in entries] + [False]
        self.return_of: dict[int, int] = {}  # call node -> its return node
        call_of_op = {}
        for node, entry in enumerate(entries, start=1):
            if entry[3]:
                call_of_op[entry[2]] = node
            else:
                self.return_of[call_of_op[entry[2]]] = node
        self.bit = []  # op -> its bit in `placed` (returning ops) or `placed_open` (open-ended ones)
        counts = [0, 0]
        for op in ops:
            self.bit.append(1 << counts[op.open_ended])
            counts[op.open_ended] += 1
        self.explored: dict[tuple, list[int]] = {}  # (placed, value) -> the open-ended sets placed with it
        self.steps = 0
        self.best_depth = 0  # moves in the longest prefix
        self.best_prefix: list[int] = []
        self.best_state: Any = None
        self.best_unplaced: list[int] = []

    def run(self, steps_max: int) -> bool | None:
        placed, placed_open = 0, 0  # bitsets of the linearized returning / open-ended operations
        returning_left = sum(not op.open_ended for op in self.ops)
        stack: list[_Level] = []
        level = self._level(None)
        while returning_left:  # open-ended operations left over never happened
            self.steps += 1
            if self.steps > steps_max:
                return None
            taken = next(level.moves, None)
            if taken is None:  # the blocking return's operation cannot have taken effect by now
                self._remember_dead_end(stack, level)
                if not stack:
                    return False
                level = stack.pop()
                placed, placed_open = self._placed(level.taken, placed, placed_open)
                self._unlift(level.taken)
                returning_left += 1
                continue
            state = self._after(level.state, taken)
            next_placed, next_placed_open = self._placed(taken, placed, placed_open)
            if self._first_visit(next_placed, next_placed_open, state):
                level.taken = taken
                stack.append(level)
                placed, placed_open = next_placed, next_placed_open
                self._lift(taken)
                returning_left -= 1
                level = self._level(state)
        return True

    def _level(self, state: Any) -> _Level:
        calls, open_calls = [], []
        node = self.links.first()
        while self.is_call[node]:
            (open_calls if self.ops[self.op_of[node]].open_ended else calls).append(node)
            node = self.links.next[node]
        return _Level(state, calls, open_calls, node, self._moves(state, calls, open_calls))

    def _moves(self, state: Any, calls: list[int], open_calls: list[int]) -> Iterator[Move]:
        """Each call in turn: alone if legal, else after each chain of open-ended operations that
        leads to the value it needs."""
        producers: dict[Any, list[int]] | None = None  # value -> the open calls that may leave it
        for call in calls:
            op = self.ops[self.op_of[call]]
            if _step(op, state)[0]:
                yield call, ()
                continue
            if producers is None:
                producers = self._producers(open_calls)
            needed = op.argument if op.f == READ else op.argument[0]
            for chain in self._chains(producers, needed, state, frozenset()):
                yield call, chain

    def _producers(self, open_calls: list[int]) -> dict[Any, list[int]]:
        producers: dict[Any, list[int]] = {}
        for call in open_calls:
            op = self.ops[self.op_of[call]]
            if op.f == WRITE:
                producers.setdefault(op.argument, []).append(call)
            elif op.argument[0] != op.argument[1]:
                producers.setdefault(op.argument[1], []).append(call)
        return producers

    def _chains(self, producers: dict[Any, list[int]], needed: Any, state: Any,
                used: frozenset[int]) -> Iterator[tuple[int, ...]]:
        """The chains of open calls, none twice, each changing the value, from `state` to `needed`."""
        for call in producers.get(needed, ()):
            if call in used:
                continue
            op = self.ops[self.op_of[call]]
            if op.f == WRITE or op.argument[0] == state:
                yield (call,)
                continue
            for chain in self._chains(producers, op.argument[0], state, used | {call}):
                yield chain + (call,)

    def _after(self, state: Any, move: Move) -> Any:
        call, chain = move
        for node in chain + (call,):
            legal, state = _step(self.ops[self.op_of[node]], state)
            assert legal, move
        return state

    def _placed(self, move: Move, placed: int, placed_open: int) -> tuple[int, int]:
        """The linearized sets with the move's bits flipped: set when it is taken, cleared when undone."""
        call, chain = move
        for node in chain:
            placed_open ^= self.bit[self.op_of[node]]
        return placed ^ self.bit[self.op_of[call]], placed_open

    def _first_visit(self, placed: int, placed_open: int, state: Any) -> bool:
        explored = self.explored.setdefault((*_compact(placed), state), [])
        if any(earlier & ~placed_open == 0 for earlier in explored):
            return False
        explored.append(placed_open)
        return True

    def _lift(self, move: Move) -> None:
        call, chain = move
        for node in chain + (call,):
            self.links.lift(node)
            self.links.lift(self.return_of[node])

    def _unlift(self, move: Move) -> None:
        call, chain = move
        for node in reversed(chain + (call,)):
            self.links.unlift(self.return_of[node])
            self.links.unlift(node)

    def _remember_dead_end(self, stack: list[_Level], level: _Level) -> None:
        """Keep the deepest dead end: the linearization so far, the register's value, and the
        operations it could have gone on with, the blocking return's last."""
        if self.best_unplaced and len(stack) <= self.best_depth:
            return
        self.best_depth = len(stack)
        self.best_prefix = [self.op_of[node] for done in stack for node in done.taken[1] + (done.taken[0],)]
        self.best_state = level.state
        blocked = self.op_of[level.blocking]
        self.best_unplaced = [self.op_of[node] for node in level.calls + level.open_calls
                              if self.op_of[node] != blocked] + [blocked]


def _compact(placed: int) -> tuple[int, int]:
    """An exact, short form of a set of returning operations numbered in invocation order: all
    below the lowest missing one are in it, so only the bits from there on are kept."""
    lowest_missing = ((placed + 1) & ~placed).bit_length() - 1
    return lowest_missing, placed >> lowest_missing
