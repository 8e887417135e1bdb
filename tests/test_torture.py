"""`aurora-db torture`: the fault planner, the outcome of an error, the bank and set checkers on
hand-made histories, and (slow) a short run of every workload against a real cluster under faults.
The linearizability and list-append checkers have their own tests (test_torture_checkers.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from aurora_db.torture.client import Progress, Rejected, outcome_of
from aurora_db.torture.history import FAIL, INFO, OK, History, operations
from aurora_db.torture.nemesis import FAULT_KINDS, KILL_READER, KILL_STORAGE, PAUSE, STORAGE_KILLED_MAX, SWITCHOVER, plan_faults
from aurora_db.torture.workloads import BANK_ACCOUNTS, BANK_INITIAL_BALANCE, Bank, Set

STORAGE = ["a1", "a2", "b1", "b2", "c1", "c2"]
RUN_TIMEOUT_S = 900


# --- the nemesis's plan -----------------------------------------------------------------------

def test_a_seed_gives_one_plan_and_faults_never_overlap():
    plan = plan_faults(42, 300, STORAGE)
    assert plan == plan_faults(42, 300, STORAGE)
    assert plan != plan_faults(43, 300, STORAGE)
    assert {fault.kind for fault in plan} == set(FAULT_KINDS)
    for earlier, later in zip(plan, plan[1:]):
        assert earlier.at_s + earlier.hold_s < later.at_s
    assert plan[-1].at_s + plan[-1].hold_s <= 300


def test_storage_kills_leave_a_read_quorum_and_readerless_clusters_get_no_reader_faults():
    plan = plan_faults(7, 2_000, STORAGE, readers=0)
    kills = [fault for fault in plan if fault.kind == KILL_STORAGE]
    assert kills and all(1 <= len(fault.storage) <= STORAGE_KILLED_MAX for fault in kills)
    assert {len(fault.storage) for fault in kills} == {1, 2, 3}
    assert not [fault for fault in plan if fault.kind in (KILL_READER, SWITCHOVER)]
    assert not [fault for fault in plan if fault.kind == PAUSE and fault.role == "reader"]


def test_only_the_kinds_asked_for_and_none_when_none_are():
    assert {fault.kind for fault in plan_faults(1, 600, STORAGE, kinds=(PAUSE,))} == {PAUSE}
    assert plan_faults(1, 600, STORAGE, kinds=()) == []


# --- what an error says about an operation ---------------------------------------------------

def _database_error(sqlstate: str) -> psycopg.Error:
    error = psycopg.errors.lookup(sqlstate)("refused")
    return error


@pytest.mark.parametrize("sqlstate", ["40001", "40P01", "23505", "25006"])
def test_an_error_that_ends_the_transaction_is_a_definite_failure_even_after_commit(sqlstate):
    assert outcome_of(_database_error(sqlstate), Progress(sent=True))[0] == FAIL


@pytest.mark.parametrize("sqlstate", ["08006", "57P01"])
def test_an_outcome_unknown_or_shutdown_error_after_a_commit_was_sent_is_unknown(sqlstate):
    assert outcome_of(_database_error(sqlstate), Progress(sent=True))[0] == INFO
    assert outcome_of(_database_error(sqlstate), Progress(sent=False))[0] == FAIL


def test_a_broken_connection_or_timeout_is_unknown_only_once_a_commit_may_have_been_sent():
    for error in (psycopg.OperationalError("server closed the connection unexpectedly"), TimeoutError()):
        assert outcome_of(error, Progress(sent=True))[0] == INFO
        assert outcome_of(error, Progress(sent=False))[0] == FAIL
    assert outcome_of(Rejected("no funds"), Progress(sent=True)) == (FAIL, "no funds")


# --- the bank and set checkers ---------------------------------------------------------------

def _read(history: History, process: int, balances: dict[int, int], final: bool = False) -> None:
    value = {"endpoint": "writer", **({"final": True} if final else {})}
    history.invoke(process, "read", value)
    history.complete(process, OK, {**value, "balances": {str(k): v for k, v in balances.items()}})


def test_bank_reads_must_keep_the_total_and_no_balance_below_zero():
    even = {account: BANK_INITIAL_BALANCE for account in range(BANK_ACCOUNTS)}
    history = History()
    _read(history, 0, even)
    _read(history, 1, {**even, 0: BANK_INITIAL_BALANCE - 5, 1: BANK_INITIAL_BALANCE + 5}, final=True)
    assert Bank().check(history.events)["valid"]

    _read(history, 2, {**even, 0: BANK_INITIAL_BALANCE - 5})  # a transfer half seen
    verdict = Bank().check(history.events)
    assert not verdict["valid"] and verdict["bad_reads"] == 1
    assert "total" in verdict["examples"][0]["problems"][0]

    negative = History()
    _read(negative, 0, {**even, 0: -1, 1: 2 * BANK_INITIAL_BALANCE + 1}, final=True)
    assert Bank().check(negative.events)["examples"][0]["problems"] == ["a negative balance"]


def test_bank_without_a_final_read_is_not_valid():
    history = History()
    _read(history, 0, {account: BANK_INITIAL_BALANCE for account in range(BANK_ACCOUNTS)})
    assert not Bank().check(history.events)["valid"]


def _add(history: History, process: int, value: int, outcome: str) -> None:
    history.invoke(process, "add", value)
    history.complete(process, outcome, value)


def _set_read(history: History, process: int, seen: list[int], final: bool = False) -> None:
    history.invoke(process, "read", "final" if final else None)
    history.complete(process, OK, seen)


def test_set_every_acknowledged_insert_is_in_every_later_read():
    history = History()
    _add(history, 0, 1, OK)
    _add(history, 1, 2, INFO)  # unknown: may be present or not
    _add(history, 2, 3, FAIL)
    _set_read(history, 0, [1])
    _set_read(history, 0, [1, 2], final=True)
    verdict = Set().check(history.events)
    assert verdict["valid"] and verdict["unknown_present_in_final_read"] == 1

    lost = History()
    _add(lost, 0, 1, OK)
    _add(lost, 0, 2, OK)
    _set_read(lost, 1, [2], final=True)
    verdict = Set().check(lost.events)
    assert not verdict["valid"] and verdict["lost"][0]["missing"] == [1]


def test_set_a_read_may_miss_an_insert_still_in_flight_but_nothing_never_or_failed_inserted_appears():
    history = History()
    history.invoke(0, "add", 1)
    _set_read(history, 1, [])  # the insert of 1 was not acknowledged when this read began
    history.complete(0, OK, 1)
    _set_read(history, 1, [1], final=True)
    assert Set().check(history.events)["valid"]

    garbage = History()
    _add(garbage, 0, 1, OK)
    _add(garbage, 0, 2, FAIL)
    _set_read(garbage, 1, [1, 2, 99], final=True)
    verdict = Set().check(garbage.events)
    assert not verdict["valid"]
    assert verdict["never_inserted"] == [99] and verdict["failed_but_present"] == [2]


def test_an_operation_never_completed_counts_as_unknown():
    history = History()
    history.invoke(0, "add", 1)
    [operation] = operations(history.events)
    assert operation.type == INFO and operation.complete_ns is None


# --- a short run against a real cluster ------------------------------------------------------

@pytest.mark.slow
def test_every_workload_passes_a_short_run_under_faults(tmp_path):
    """The CI run of `aurora-db torture` (DESIGN.md 11): every workload, every kind of fault, about
    a minute each on a cluster torture starts itself."""
    output = tmp_path / "torture"
    done = subprocess.run([sys.executable, "-m", "aurora_db.cli", "torture", "--seconds", "60", "--seed", "20261128",
                           "--output", str(output)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((output / "results.json").read_text())
    assert [result["workload"] for result in results["workloads"]] == ["bank", "register", "set", "list-append"]
    faults = [record for result in results["workloads"] for record in result["faults"]]
    assert len(faults) >= 8 and all(record["healed_s"] is not None for record in faults)
    for result in results["workloads"]:
        assert result["valid"] is True, result
        assert result["operations"]["ok"] > 100, result["operations"]
        assert (output / f"{result['workload']}-history.jsonl").exists()
