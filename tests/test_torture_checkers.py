"""The history checkers on hand-made histories, each valid or broken in one known way: linearizable
registers (aurora_db/torture/linearizable.py) and list-append transactions
(aurora_db/torture/list_append.py)."""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any

from aurora_db.torture.history import operations
from aurora_db.torture.linearizable import check_registers
from aurora_db.torture.list_append import FORBIDDEN_BY_SNAPSHOT_ISOLATION, check_list_append

RANDOM_OPS = 300
RANDOM_PROCESSES = 5
RANDOM_CHECK_S_MAX = 2.0
RANDOM_TXNS = 500
BRUTE_FORCE_OPS_MAX = 7
BRUTE_FORCE_HISTORIES = 600


class Log:
    """Events as history.py records them: indexes in order, time_ns 10 apart."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._open: dict[int, dict] = {}

    def invoke(self, process: int, f: str, value: Any) -> None:
        self._open[process] = self._append(process, "invoke", f, value)

    def complete(self, process: int, type_: str, value: Any = None) -> dict:
        invoke = self._open.pop(process)
        return self._append(process, type_, invoke["f"], invoke["value"] if value is None else value)

    def ok(self, process: int, value: Any = None) -> dict:
        return self.complete(process, "ok", value)

    def fail(self, process: int) -> dict:
        return self.complete(process, "fail")

    def info(self, process: int) -> dict:
        return self.complete(process, "info")

    def op(self, process: int, f: str, value: Any, result: Any = None, type_: str = "ok") -> None:
        """An operation with nothing concurrent to it."""
        self.invoke(process, f, value)
        self.complete(process, type_, result)

    def _append(self, process: int, type_: str, f: str, value: Any) -> dict:
        index = len(self.events)
        event = {"index": index, "process": process, "type": type_, "f": f, "value": value, "time_ns": 10 * index}
        self.events.append(event)
        return event


# Registers ---------------------------------------------------------------------------------------

def write(log: Log, process: int, value: Any, key: Any = "x", type_: str = "ok") -> None:
    log.op(process, "write", [key, value], type_=type_)


def read(log: Log, process: int, value: Any, key: Any = "x") -> None:
    log.op(process, "read", [key, None], [key, value])


def cas(log: Log, process: int, expected: Any, new: Any, type_: str = "ok", key: Any = "x") -> None:
    log.op(process, "cas", [key, [expected, new]], type_=type_)


def test_sequential_writes_and_reads_are_linearizable():
    log = Log()
    read(log, 0, None)
    write(log, 0, 1)
    read(log, 1, 1)
    write(log, 1, 2)
    read(log, 0, 2)
    result = check_registers(log.events)
    assert result.valid is True
    assert result.summary() == {"valid": True, "keys_checked": 1, "keys_invalid": 0, "keys_unknown": [],
                                "counterexamples": []}


def test_a_stale_read_after_a_completed_write_is_not_linearizable():
    log = Log()
    write(log, 0, 1)
    write(log, 0, 2)
    read(log, 1, 1)
    result = check_registers(log.events)
    assert result.valid is False
    counterexample = result.summary()["counterexamples"][0]
    assert counterexample["key"] == "x"
    assert [op["value"] for op in counterexample["prefix_tail"]] == [["x", 1], ["x", 2]]
    assert counterexample["state"] == 2
    assert counterexample["unplaced"][-1] == {"process": 1, "type": "ok", "f": "read", "value": ["x", 1],
                                              "invoke_index": 4, "complete_index": 5}


def test_a_read_concurrent_with_a_write_may_see_either_value_but_not_an_older_one():
    for seen, valid in ((1, True), (2, True), (None, False)):
        log = Log()
        write(log, 0, 1)
        log.invoke(0, "write", ["x", 2])
        log.invoke(1, "read", ["x", None])
        log.ok(1, ["x", seen])
        log.ok(0)
        assert check_registers(log.events).valid is valid, seen


def test_cas_applies_only_on_the_expected_value_and_a_failed_cas_never_applies():
    log = Log()
    write(log, 0, 1)
    cas(log, 0, 1, 2)
    cas(log, 1, 2, 9, type_="fail")  # it would have matched, but it certainly did not happen
    read(log, 1, 2)
    assert check_registers(log.events).valid is True
    cas(log, 0, 1, 3)  # the register holds 2: this cas cannot have succeeded
    assert check_registers(log.events).valid is False


def test_an_info_write_may_explain_a_later_read_and_then_stays_applied():
    log = Log()
    write(log, 0, 1)
    write(log, 1, 2, type_="info")
    read(log, 2, 2)
    assert check_registers(log.events).valid is True
    read(log, 2, 1)  # the write of 2 took effect before the last read: 1 is gone
    assert check_registers(log.events).valid is False


def test_an_operation_never_completed_is_an_info_one():
    log = Log()
    write(log, 0, 1)
    log.invoke(1, "write", ["x", 2])
    read(log, 2, 1)
    read(log, 2, 2)
    assert check_registers(log.events).valid is True


def test_an_info_write_never_seen_may_never_have_happened():
    log = Log()
    write(log, 0, 1, type_="info")
    cas(log, 1, None, 5, type_="info")
    read(log, 2, None)
    read(log, 2, None)
    assert check_registers(log.events).valid is True


def test_failed_writes_and_info_reads_have_no_effect():
    log = Log()
    write(log, 0, 1, type_="fail")
    log.op(1, "read", ["x", None], type_="info")
    read(log, 2, None)
    assert check_registers(log.events).valid is True


def test_a_read_of_a_value_never_written_is_not_linearizable():
    log = Log()
    write(log, 0, 1)
    read(log, 1, 7)
    assert check_registers(log.events).valid is False


def test_keys_are_checked_independently_and_the_summary_names_the_invalid_one():
    log = Log()
    write(log, 0, 1, key="a")
    write(log, 1, 1, key=2)
    read(log, 0, 1, key="a")
    read(log, 1, None, key=2)
    result = check_registers(log.events)
    assert result.valid is False
    assert result.keys["a"].valid is True and result.keys[2].valid is False
    summary = json.loads(json.dumps(result.summary()))
    assert summary["keys_checked"] == 2 and summary["keys_invalid"] == 1
    assert [counterexample["key"] for counterexample in summary["counterexamples"]] == [2]


def test_a_search_out_of_steps_is_unknown_not_valid():
    log = Log()
    write(log, 0, 1)
    read(log, 1, 1)
    result = check_registers(log.events, search_steps_max=1)
    assert result.valid is None
    assert result.summary()["keys_unknown"] == ["x"]


def simulated_register(seed: int) -> Log:
    """RANDOM_OPS operations by RANDOM_PROCESSES clients on one real register: each takes effect at
    a random moment between its invoke and its completion; a few end "info", applied or not."""
    rng = random.Random(seed)
    log = Log()
    state, next_value, invoked = None, 1, 0
    process_of = list(range(RANDOM_PROCESSES))  # client -> its current process
    pending: dict[int, dict] = {}  # client -> {"f", "argument", "applied", "result"}
    while invoked < RANDOM_OPS or pending:
        client = rng.randrange(RANDOM_PROCESSES)
        process = process_of[client]
        op = pending.get(client)
        if op is None:
            if invoked == RANDOM_OPS:
                continue
            f = rng.choice(["read", "read", "write", "write", "cas"])
            argument = {"read": None, "write": next_value, "cas": [rng.choice([state, next_value - 2]), next_value]}[f]
            next_value += f != "read"
            log.invoke(process, f, ["x", argument])
            pending[client] = {"f": f, "argument": argument, "applied": False}
            invoked += 1
        elif not op["applied"] and rng.random() < 0.01:
            del pending[client]
            log.info(process)  # never happened
            process_of[client] += RANDOM_PROCESSES
        elif not op["applied"]:
            op["applied"], op["result"] = True, state
            if op["f"] == "write" or (op["f"] == "cas" and state == op["argument"][0]):
                state = op["argument"] if op["f"] == "write" else op["argument"][1]
        else:
            del pending[client]
            if rng.random() < 0.02:
                log.info(process)  # happened
                process_of[client] += RANDOM_PROCESSES
            elif op["f"] == "read":
                log.ok(process, ["x", op["result"]])
            elif op["f"] == "cas" and op["result"] != op["argument"][0]:
                log.fail(process)
            else:
                log.ok(process)
    return log


def test_a_random_history_of_a_real_register_is_linearizable_and_one_stale_read_breaks_it():
    log = simulated_register(seed=7)
    started_s = time.monotonic()
    assert check_registers(log.events).valid is True
    assert time.monotonic() - started_s < RANDOM_CHECK_S_MAX
    first_write = next(e for e in log.events if e["f"] == "write" and e["type"] == "ok")
    last_read = next(e for e in reversed(log.events) if e["f"] == "read" and e["type"] == "ok")
    last_read["value"] = ["x", first_write["value"][1]]  # overwritten long before
    result = check_registers(log.events)
    assert result.valid is False
    assert result.summary()["counterexamples"][0]["unplaced"][-1]["complete_index"] == last_read["index"]


def brute_force_linearizable(events: list[dict]) -> bool:
    """The definition, for a handful of operations on key "x": some order of them respects real
    time and the register, every "info" write or cas taking effect somewhere or nowhere."""
    ops = [op for op in operations(events) if op.type == "ok" or (op.type == "info" and op.f != "read")]

    def before(op) -> tuple:
        return (op.complete_ns, op.complete_index) if op.type == "ok" else (math.inf, 0)

    def legal(op, state) -> tuple[bool, Any]:
        argument = op.value[1] if op.f == "read" else op.invoke_value[1]
        if op.f == "read":
            return argument == state, state
        if op.f == "write":
            return True, argument
        return (True, argument[1]) if state == argument[0] else (op.type == "info", state)

    def search(left: list, state: Any) -> bool:
        if all(op.type == "info" for op in left):
            return True
        for op in left:
            rest = [other for other in left if other is not op]
            if all(before(other) > (op.invoke_ns, op.invoke_index) for other in rest):
                ok, after = legal(op, state)
                if ok and search(rest, after):
                    return True
        return False

    return search(ops, None)


def random_small_register_history(rng: random.Random) -> Log:
    """Up to BRUTE_FORCE_OPS_MAX operations by three clients on values 1..3, with outcomes and
    results drawn at random: valid or not by chance."""
    log = Log()
    process_of, pending, invoked_count = [0, 1, 2], {}, 0
    ops_count = rng.randint(1, BRUTE_FORCE_OPS_MAX)
    while invoked_count < ops_count or pending:
        client = rng.randrange(3)
        if client not in pending:
            if invoked_count < ops_count:
                f = rng.choice(["read", "write", "cas"])
                value = {"read": None, "write": rng.randint(1, 3),
                         "cas": [rng.choice([None, 1, 2, 3]), rng.randint(1, 3)]}[f]
                log.invoke(process_of[client], f, ["x", value])
                pending[client] = f
                invoked_count += 1
            continue
        f = pending.pop(client)
        type_ = rng.choice(["ok", "ok", "fail", "info"])
        result = ["x", rng.choice([None, 1, 2, 3])] if f == "read" and type_ == "ok" else None
        log.complete(process_of[client], type_, result)
        if type_ == "info":
            process_of[client] += 3
    return log


def test_the_search_agrees_with_brute_force_on_small_random_histories():
    rng = random.Random(5)
    verdicts = {True: 0, False: 0}
    for _ in range(BRUTE_FORCE_HISTORIES):
        log = random_small_register_history(rng)
        expected = brute_force_linearizable(log.events)
        assert check_registers(log.events).valid is expected, log.events
        verdicts[expected] += 1
    assert min(verdicts.values()) > BRUTE_FORCE_HISTORIES // 5  # both verdicts are exercised


# List append -------------------------------------------------------------------------------------

def txn(log: Log, process: int, micro_ops: list, type_: str = "ok") -> None:
    """A transaction with nothing concurrent to it; reads are written ["r", key, [...]] and are
    invoked as ["r", key, None]."""
    log.op(process, "txn", invoked(micro_ops), micro_ops, type_=type_)


def invoked(micro_ops: list) -> list:
    return [[f, key, None if f == "r" else value] for f, key, value in micro_ops]


def test_a_serial_history_has_no_anomalies():
    log = Log()
    txn(log, 0, [["append", "k1", 1], ["r", "k1", [1]]])
    txn(log, 1, [["r", "k2", []], ["append", "k1", 2], ["append", "k2", 3]])
    txn(log, 0, [["r", "k1", [1, 2]], ["r", "k2", [3]]])
    result = check_list_append(log.events)
    assert result.valid is True
    assert result.anomaly_counts == {}
    summary = json.loads(json.dumps(result.summary()))
    assert summary == {"valid": True, "txns": {"ok": 3, "fail": 0, "info": 0}, "fatal": [],
                       "anomaly_counts": {}, "anomalies": {}}


def concurrently(log: Log, first: list, second: list) -> None:
    """Two transactions by processes 0 and 1, each invoked before either completes."""
    log.invoke(0, "txn", invoked(first))
    log.invoke(1, "txn", invoked(second))
    log.ok(0, first)
    log.ok(1, second)


def test_g0_writes_to_two_keys_in_opposite_orders():
    log = Log()
    concurrently(log, [["append", "k1", 1], ["append", "k2", 2]], [["append", "k1", 3], ["append", "k2", 4]])
    txn(log, 2, [["r", "k1", [1, 3]], ["r", "k2", [4, 2]]])
    result = check_list_append(log.events)
    assert result.valid is False
    assert "G0" in result.fatal
    [example] = result.anomalies["G0"]
    assert sorted(step["op"] for step in example["cycle"]) == [0, 1]
    assert {(step["edge"], step["key"]) for step in example["cycle"]} == {("ww", "k1"), ("ww", "k2")}


def test_g1a_a_read_of_an_aborted_append():
    log = Log()
    txn(log, 0, [["append", "k", 1]], type_="fail")
    txn(log, 1, [["r", "k", [1]]])
    result = check_list_append(log.events)
    assert result.fatal == ["G1a"]
    assert result.anomalies["G1a"][0]["writer"]["op"] == 0


def test_g1b_a_read_of_an_intermediate_append():
    log = Log()
    log.invoke(0, "txn", invoked([["append", "k", 1], ["append", "k", 2]]))
    txn(log, 1, [["r", "k", [1]]])
    log.ok(0)
    result = check_list_append(log.events)
    assert result.fatal == ["G1b"]
    assert result.anomalies["G1b"][0]["element"] == 1


def test_g1c_two_transactions_each_read_the_other():
    log = Log()
    concurrently(log, [["append", "k1", 1], ["r", "k2", [2]]], [["append", "k2", 2], ["r", "k1", [1]]])
    result = check_list_append(log.events)
    assert "G1c" in result.fatal and result.valid is False
    assert {step["edge"] for step in result.anomalies["G1c"][0]["cycle"]} == {"wr"}


def test_g_single_a_lost_update():
    log = Log()
    concurrently(log, [["r", "k", []], ["append", "k", 1]], [["r", "k", []], ["append", "k", 2]])
    txn(log, 2, [["r", "k", [1, 2]]])
    result = check_list_append(log.events)
    assert result.fatal == ["G-single"]
    assert sorted(step["edge"] for step in result.anomalies["G-single"][0]["cycle"]) == ["rw", "ww"]


def test_g2_write_skew_is_reported_but_allowed_by_snapshot_isolation():
    log = Log()
    concurrently(log, [["r", "k1", []], ["r", "k2", []], ["append", "k1", 1]],
                 [["r", "k1", []], ["r", "k2", []], ["append", "k2", 2]])
    txn(log, 2, [["r", "k1", [1]], ["r", "k2", [2]]])
    result = check_list_append(log.events)
    assert result.valid is True
    assert result.anomaly_counts == {"G2": 1}
    assert [step["edge"] for step in result.anomalies["G2"][0]["cycle"]] == ["rw", "rw"]
    serializable = check_list_append(log.events, forbidden=FORBIDDEN_BY_SNAPSHOT_ISOLATION | {"G2"})
    assert serializable.valid is False and serializable.fatal == ["G2"]


def test_a_stale_read_after_an_acknowledged_commit_is_a_realtime_anomaly():
    log = Log()
    txn(log, 0, [["append", "k", 1]])
    txn(log, 1, [["r", "k", []]])  # invoked after the append's commit was acknowledged
    txn(log, 2, [["r", "k", [1]]])
    result = check_list_append(log.events)
    assert result.fatal == ["G-single-realtime"]
    assert sorted(step["edge"] for step in result.anomalies["G-single-realtime"][0]["cycle"]) == ["rt", "rw"]


def test_a_stale_read_concurrent_with_the_commit_is_fine():
    log = Log()
    log.invoke(0, "txn", invoked([["append", "k", 1]]))
    txn(log, 1, [["r", "k", []]])
    log.ok(0)
    txn(log, 2, [["r", "k", [1]]])
    assert check_list_append(log.events).anomaly_counts == {}


def test_reads_that_are_not_prefixes_of_one_another_are_incompatible_orders():
    log = Log()
    concurrently(log, [["append", "k", 1]], [["append", "k", 2]])
    txn(log, 2, [["r", "k", [1, 2]]])
    txn(log, 3, [["r", "k", [2, 1]]])
    result = check_list_append(log.events)
    assert "incompatible-order" in result.fatal
    example = result.anomalies["incompatible-order"][0]
    assert example["key"] == "k"
    assert {example["read"]["op"], example["longest_read"]["op"]} == {4, 6}


def test_duplicate_garbage_and_internal_reads():
    log = Log()
    txn(log, 0, [["append", "k", 1]])
    txn(log, 1, [["r", "k", [1, 1]]])
    txn(log, 2, [["r", "j", [99]]])
    txn(log, 3, [["append", "m", 5], ["r", "m", []]])
    result = check_list_append(log.events)
    assert {"duplicate-elements", "garbage-read", "internal"} <= set(result.fatal)
    assert result.anomalies["internal"][0]["op"] == 6


def test_an_info_transaction_may_have_committed_or_not():
    observed = Log()
    txn(observed, 0, [["append", "k", 1]], type_="info")
    txn(observed, 1, [["r", "k", [1]]])
    assert check_list_append(observed.events).anomaly_counts == {}
    unobserved = Log()
    txn(unobserved, 0, [["append", "k", 1]], type_="info")
    txn(unobserved, 1, [["r", "k", []]])
    result = check_list_append(unobserved.events)
    assert result.valid is True and result.anomaly_counts == {}
    assert result.txns == {"ok": 1, "fail": 0, "info": 1}


def simulated_list_store(seed: int, txns_count: int) -> Log:
    """Transactions of 1 to 4 micro-ops on a few keys by RANDOM_PROCESSES clients, each applied
    atomically at a random moment between its invoke and its completion: strict serializable."""
    rng = random.Random(seed)
    log = Log()
    store: dict[str, list[int]] = {}
    next_element, invoked_count = 1, 0
    process_of = list(range(RANDOM_PROCESSES))
    pending: dict[int, list] = {}  # client -> micro-ops, with reads filled once applied
    applied: set[int] = set()
    while invoked_count < txns_count or pending:
        client = rng.randrange(RANDOM_PROCESSES)
        process = process_of[client]
        if client not in pending:
            if invoked_count == txns_count:
                continue
            micro_ops = []
            for _ in range(rng.randint(1, 4)):
                key = rng.choice("abcd")
                micro_ops.append(["append", key, next_element] if rng.random() < 0.5 else ["r", key, None])
                next_element += 1
            log.invoke(process, "txn", micro_ops)
            pending[client] = micro_ops
            invoked_count += 1
        elif client not in applied:
            outcome = rng.random()
            if outcome < 0.03:
                del pending[client]
                log.fail(process)
                continue
            applied.add(client)
            pending[client] = applied_to(store, pending[client])
        else:
            done = pending.pop(client)
            applied.discard(client)
            if rng.random() < 0.03:
                log.info(process)
                process_of[client] += RANDOM_PROCESSES
            else:
                log.ok(process, done)
    return log


def applied_to(store: dict[str, list[int]], micro_ops: list) -> list:
    """The micro-ops as a transaction that just ran on `store` completes them."""
    done = []
    for f, key, value in micro_ops:
        if f == "append":
            store.setdefault(key, []).append(value)
            done.append([f, key, value])
        else:
            done.append([f, key, list(store.get(key, []))])
    return done


def test_a_random_strict_serializable_history_has_no_anomalies():
    log = simulated_list_store(seed=11, txns_count=RANDOM_TXNS)
    started_s = time.monotonic()
    result = check_list_append(log.events)
    assert time.monotonic() - started_s < RANDOM_CHECK_S_MAX
    assert result.anomaly_counts == {} and result.valid is True
    assert result.txns["ok"] > RANDOM_TXNS // 2 and result.txns["fail"] > 0 and result.txns["info"] > 0
