"""The four torture workloads: what clients do, the final reads after the cluster is healed, and
the check of the history (history.py has the event format).

- bank: 8 accounts with a fixed total; transfers in REPEATABLE READ or READ COMMITTED transactions,
  reads of every account (half of them on the reader endpoint). Every read sees the total and no
  negative balance.
- register: read / write / compare-and-set of single rows, keys rotating so that each key's
  history stays short; the history must be linearizable per key.
- set: inserts of unique values, reads of the whole set; every acknowledged insert is in every
  read invoked after it was acknowledged (the final read after recovery included), and nothing
  appears that was never inserted or whose insert certainly failed.
- list-append: REPEATABLE READ transactions that append unique values to lists and read lists;
  the dependency graph must show none of the anomalies snapshot isolation forbids.

Invariants: a workload's generator state lives in one event loop (no locks); a client never
retries an operation; every operation's outcome is decided by client.outcome_of or a Rejected.
"""

from __future__ import annotations

import random
from typing import Any

from aurora_db.torture.client import Connections, Progress, Rejected, commit, rollback
from aurora_db.torture.history import FAIL, INFO, OK, operations
from aurora_db.torture.linearizable import check_registers
from aurora_db.torture.list_append import check_list_append

BANK_ACCOUNTS = 8
BANK_INITIAL_BALANCE = 100
BANK_TOTAL = BANK_ACCOUNTS * BANK_INITIAL_BALANCE
BANK_TRANSFER_MAX = 5
REGISTER_KEYS_ACTIVE = 5  # keys in use at once
REGISTER_OPS_PER_KEY = 60  # then the key is retired and a fresh one takes its place
REGISTER_VALUES = 5  # written values are 0 .. 4: collisions make compare-and-set interesting
SET_READ_PERMILLE = 5  # a read returns the whole set: keep them rare
LIST_KEYS_ACTIVE = 8
LIST_APPENDS_PER_KEY = 40
LIST_OPS_PER_TXN_MAX = 4
FINAL_READ_KEYS_PER_TXN = 100
EXAMPLES_MAX = 5  # anomalies of each kind shown in a verdict


class Workload:
    """One workload: its tables, its operations and its checker."""

    name = ""
    setup_statements: tuple[str, ...] = ()

    def generate(self, rng: random.Random) -> tuple[str, Any]:
        raise NotImplementedError

    async def apply(self, connections: Connections, f: str, value: Any, progress: Progress) -> Any:
        """Run one operation; returns the completion's value. Raises Rejected for a definite
        refusal, anything else for the caller to classify."""
        raise NotImplementedError

    def final_operations(self) -> list[tuple[str, Any]]:
        """Operations the runner performs (retrying until one succeeds) after the cluster is healed."""
        return []

    def check(self, events: list[dict]) -> dict:
        raise NotImplementedError


# --- bank -------------------------------------------------------------------------------------

class Bank(Workload):
    name = "bank"
    table = "torture_bank"
    setup_statements = (
        f"DROP TABLE IF EXISTS {table}",
        f"CREATE TABLE {table} (id int PRIMARY KEY, balance int NOT NULL)",
        f"INSERT INTO {table} SELECT g, {BANK_INITIAL_BALANCE} FROM generate_series(0, {BANK_ACCOUNTS - 1}) AS g",
    )

    def generate(self, rng: random.Random) -> tuple[str, Any]:
        if rng.random() < 0.4:
            return "read", {"endpoint": rng.choice(("writer", "reader"))}
        source, target = rng.sample(range(BANK_ACCOUNTS), 2)
        return "transfer", {"from": source, "to": target, "amount": rng.randint(1, BANK_TRANSFER_MAX),
                            "isolation": rng.choice(("repeatable read", "read committed"))}

    async def apply(self, connections: Connections, f: str, value: Any, progress: Progress) -> Any:
        if f == "read":
            connection = await (connections.reader() if value["endpoint"] == "reader" else connections.writer())
            rows = await (await connection.execute(f"SELECT id, balance FROM {self.table} ORDER BY id")).fetchall()
            return {**value, "balances": {str(account): balance for account, balance in rows}}
        connection = await connections.writer()
        await connection.execute(f"BEGIN ISOLATION LEVEL {value['isolation'].upper()}")
        if value["isolation"] == "repeatable read":
            balance = (await (await connection.execute(f"SELECT balance FROM {self.table} WHERE id = %s",
                                                       (value["from"],))).fetchone())[0]
            if balance < value["amount"]:
                await rollback(connection)
                raise Rejected(f"account {value['from']} holds {balance}")
            await connection.execute(f"UPDATE {self.table} SET balance = balance - %s WHERE id = %s",
                                     (value["amount"], value["from"]))
        else:  # READ COMMITTED: the balance check is re-evaluated on the newest version after a wait
            cursor = await connection.execute(f"UPDATE {self.table} SET balance = balance - %s "
                                              f"WHERE id = %s AND balance >= %s",
                                              (value["amount"], value["from"], value["amount"]))
            if cursor.rowcount != 1:
                await rollback(connection)
                raise Rejected(f"account {value['from']} holds less than {value['amount']}")
        await connection.execute(f"UPDATE {self.table} SET balance = balance + %s WHERE id = %s",
                                 (value["amount"], value["to"]))
        await commit(connection, progress)
        return value

    def final_operations(self) -> list[tuple[str, Any]]:
        return [("read", {"endpoint": "writer", "final": True})]

    def check(self, events: list[dict]) -> dict:
        reads = [operation for operation in operations(events) if operation.f == "read" and operation.type == OK]
        wrong = []
        for read in reads:
            balances = read.value["balances"]
            problems = []
            if len(balances) != BANK_ACCOUNTS:
                problems.append(f"{len(balances)} accounts, expected {BANK_ACCOUNTS}")
            if sum(balances.values()) != BANK_TOTAL:
                problems.append(f"total {sum(balances.values())}, expected {BANK_TOTAL}")
            if any(balance < 0 for balance in balances.values()):
                problems.append("a negative balance")
            if problems:
                wrong.append({"index": read.complete_index, "endpoint": read.value["endpoint"],
                              "balances": balances, "problems": problems})
        finals = [read for read in reads if read.value.get("final")]
        return {"valid": not wrong and bool(finals), "reads_checked": len(reads), "final_read": bool(finals),
                "bad_reads": len(wrong), "examples": wrong[:EXAMPLES_MAX]}


# --- register ---------------------------------------------------------------------------------

class Register(Workload):
    name = "register"
    table = "torture_register"
    setup_statements = (f"DROP TABLE IF EXISTS {table}", f"CREATE TABLE {table} (id int PRIMARY KEY, value int)")

    def __init__(self) -> None:
        self._operations = 0

    def generate(self, rng: random.Random) -> tuple[str, Any]:
        window = self._operations // (REGISTER_KEYS_ACTIVE * REGISTER_OPS_PER_KEY)
        self._operations += 1
        key = window * REGISTER_KEYS_ACTIVE + rng.randrange(REGISTER_KEYS_ACTIVE)
        roll = rng.random()
        if roll < 0.5:
            return "read", [key, None]
        if roll < 0.75:
            return "write", [key, rng.randrange(REGISTER_VALUES)]
        return "cas", [key, [rng.randrange(REGISTER_VALUES), rng.randrange(REGISTER_VALUES)]]

    async def apply(self, connections: Connections, f: str, value: Any, progress: Progress) -> Any:
        connection = await connections.writer()
        key = value[0]
        if f == "read":
            row = await (await connection.execute(f"SELECT value FROM {self.table} WHERE id = %s", (key,))).fetchone()
            return [key, row[0] if row else None]
        progress.sent = True  # autocommit: each statement commits on its own
        if f == "write":
            cursor = await connection.execute(f"UPDATE {self.table} SET value = %s WHERE id = %s", (value[1], key))
            if cursor.rowcount == 0:  # a first write creates the row; a racing creator makes this 23505
                await connection.execute(f"INSERT INTO {self.table} (id, value) VALUES (%s, %s)", (key, value[1]))
            return value
        expected, new = value[1]
        cursor = await connection.execute(f"UPDATE {self.table} SET value = %s WHERE id = %s AND value = %s",
                                          (new, key, expected))
        if cursor.rowcount != 1:
            raise Rejected(f"the register did not hold {expected}")
        return value

    def check(self, events: list[dict]) -> dict:
        return check_registers(events).summary()


# --- set --------------------------------------------------------------------------------------

class Set(Workload):
    name = "set"
    table = "torture_set"
    setup_statements = (f"DROP TABLE IF EXISTS {table}", f"CREATE TABLE {table} (value int PRIMARY KEY)")

    def __init__(self) -> None:
        self._next_value = 0

    def generate(self, rng: random.Random) -> tuple[str, Any]:
        if rng.randrange(1000) < SET_READ_PERMILLE:
            return "read", None
        self._next_value += 1
        return "add", self._next_value

    async def apply(self, connections: Connections, f: str, value: Any, progress: Progress) -> Any:
        connection = await connections.writer()
        if f == "read":
            rows = await (await connection.execute(f"SELECT value FROM {self.table}")).fetchall()
            return sorted(row[0] for row in rows)
        progress.sent = True
        await connection.execute(f"INSERT INTO {self.table} (value) VALUES (%s)", (value,))
        return value

    def final_operations(self) -> list[tuple[str, Any]]:
        return [("read", "final")]

    def check(self, events: list[dict]) -> dict:
        history = operations(events)
        adds = [operation for operation in history if operation.f == "add"]
        attempted = {operation.invoke_value for operation in adds}
        failed = {operation.invoke_value for operation in adds if operation.type == FAIL}
        reads = [operation for operation in history if operation.f == "read" and operation.type == OK]
        acknowledgements = sorted((add.complete_index, add.value) for add in adds if add.type == OK)
        acknowledged_before: set[int] = set()  # grows as the reads are taken in invocation order
        taken = 0
        lost, unexpected, resurrected = [], set(), set()
        for read in sorted(reads, key=lambda read: read.invoke_index):
            while taken < len(acknowledgements) and acknowledgements[taken][0] < read.invoke_index:
                acknowledged_before.add(acknowledgements[taken][1])
                taken += 1
            seen = set(read.value)
            unexpected |= seen - attempted
            resurrected |= seen & failed
            missing = sorted(acknowledged_before - seen)
            if missing:
                lost.append({"read_index": read.complete_index, "missing": missing[:20], "missing_count": len(missing),
                             "final": read.invoke_value == "final"})
        final = [read for read in reads if read.invoke_value == "final"]
        acknowledged = sum(1 for add in adds if add.type == OK)
        unknown = sum(1 for add in adds if add.type == INFO)
        unknown_present = (len({add.value for add in adds if add.type == INFO} & set(final[-1].value))
                           if final else None)
        return {"valid": bool(final) and not lost and not unexpected and not resurrected,
                "final_read": bool(final), "acknowledged": acknowledged, "unknown": unknown,
                "unknown_present_in_final_read": unknown_present, "reads_checked": len(reads),
                "lost": lost[:EXAMPLES_MAX], "never_inserted": sorted(unexpected)[:20],
                "failed_but_present": sorted(resurrected)[:20]}


# --- list-append ------------------------------------------------------------------------------

class ListAppend(Workload):
    name = "list-append"
    table = "torture_append"
    setup_statements = (f"DROP TABLE IF EXISTS {table}",
                        f"CREATE TABLE {table} (key int PRIMARY KEY, elements text NOT NULL)")

    def __init__(self) -> None:
        self._active = list(range(LIST_KEYS_ACTIVE))
        self._next_key = LIST_KEYS_ACTIVE
        self._appends: dict[int, int] = {}
        self._next_value = 0

    def generate(self, rng: random.Random) -> tuple[str, Any]:
        micro_ops = []
        for _ in range(rng.randint(1, LIST_OPS_PER_TXN_MAX)):
            slot = rng.randrange(LIST_KEYS_ACTIVE)
            key = self._active[slot]
            if rng.random() < 0.5:
                micro_ops.append(["r", key, None])
                continue
            self._next_value += 1
            micro_ops.append(["append", key, self._next_value])
            self._appends[key] = self._appends.get(key, 0) + 1
            if self._appends[key] >= LIST_APPENDS_PER_KEY:
                self._active[slot] = self._next_key
                self._next_key += 1
        return "txn", micro_ops

    async def apply(self, connections: Connections, f: str, value: Any, progress: Progress) -> Any:
        connection = await connections.writer()
        await connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        done = []
        for kind, key, argument in value:
            if kind == "r":
                row = await (await connection.execute(f"SELECT elements FROM {self.table} WHERE key = %s",
                                                      (key,))).fetchone()
                done.append(["r", key, [int(element) for element in row[0].split(",")] if row else []])
                continue
            cursor = await connection.execute(f"UPDATE {self.table} SET elements = elements || %s WHERE key = %s",
                                              (f",{argument}", key))
            if cursor.rowcount == 0:  # the key's first append; a racing first append makes this 23505
                await connection.execute(f"INSERT INTO {self.table} (key, elements) VALUES (%s, %s)",
                                         (key, str(argument)))
            done.append(["append", key, argument])
        await commit(connection, progress)
        return done

    def final_operations(self) -> list[tuple[str, Any]]:
        keys = sorted(set(self._appends))
        return [("txn", [["r", key, None] for key in keys[start:start + FINAL_READ_KEYS_PER_TXN]])
                for start in range(0, len(keys), FINAL_READ_KEYS_PER_TXN)]

    def check(self, events: list[dict]) -> dict:
        return check_list_append(events).summary()


WORKLOADS = {workload.name: workload for workload in (Bank, Register, Set, ListAppend)}

