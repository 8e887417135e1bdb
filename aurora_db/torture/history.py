"""Histories of operations, as Jepsen records them: every operation is an invoke event and then
one completion event of the same process.

An event is a dict: {"index", "process", "type", "f", "value", "time_ns"} (plus "error" on a
failure). type is "invoke", "ok" (it happened), "fail" (it certainly did not happen) or "info"
(unknown: it may have happened, at any time after its invocation, or never). time_ns is
monotonic. A process runs one operation at a time; after an "info" the client continues as a new
process, so an operation of unknown outcome never overlaps a later one of the same process.

Invariants: indexes are 0, 1, 2, ... in the order events happened; every completion follows an
invoke of the same process with the same f; an operation never completed (the run ended first)
counts as "info".
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Iterable

INVOKE, OK, FAIL, INFO = "invoke", "ok", "fail", "info"
COMPLETIONS = (OK, FAIL, INFO)


@dataclasses.dataclass(slots=True)
class Operation:
    """An invoke paired with its completion. `value` is the completion's (it carries what a read
    returned), `invoke_value` the invocation's. complete_ns is None for an open-ended operation."""
    process: int
    f: str
    type: str
    invoke_value: Any
    value: Any
    invoke_ns: int
    complete_ns: int | None
    invoke_index: int
    complete_index: int | None
    error: str | None = None


class History:
    """An append-only list of events; `invoke` and `complete` stamp indexes and times."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._open: dict[int, dict] = {}  # process -> its invoke event

    def invoke(self, process: int, f: str, value: Any) -> dict:
        assert process not in self._open, f"process {process} already has an operation open"
        event = self._append({"process": process, "type": INVOKE, "f": f, "value": value})
        self._open[process] = event
        return event

    def complete(self, process: int, type_: str, value: Any, error: str | None = None) -> dict:
        assert type_ in COMPLETIONS, type_
        invoke = self._open.pop(process)
        event = {"process": process, "type": type_, "f": invoke["f"], "value": value}
        if error is not None:
            event["error"] = error
        return self._append(event)

    def open_processes(self) -> list[int]:
        return list(self._open)

    def _append(self, event: dict) -> dict:
        event = {"index": len(self.events), **event, "time_ns": time.monotonic_ns()}
        self.events.append(event)
        return event

    def write(self, path: Path) -> None:
        """One JSON event per line."""
        with open(path, "w") as out:
            for event in self.events:
                out.write(json.dumps(event, separators=(",", ":")) + "\n")


def read_history(path: Path) -> list[dict]:
    with open(path) as source:
        return [json.loads(line) for line in source if line.strip()]


def operations(events: Iterable[dict]) -> list[Operation]:
    """Pair every invoke with its process's next completion, in invocation order. An invoke
    never completed becomes an "info" operation with no completion time."""
    open_: dict[int, dict] = {}
    done: list[Operation] = []
    for event in events:
        process = event["process"]
        if event["type"] == INVOKE:
            if process in open_:
                raise ValueError(f"process {process} invoked at event {event['index']} with an operation open")
            open_[process] = event
            continue
        invoke = open_.pop(process, None)
        if invoke is None:
            raise ValueError(f"event {event['index']} completes nothing: process {process} has no open operation")
        if invoke["f"] != event["f"]:
            raise ValueError(f"event {event['index']} completes {event['f']!r}, but {invoke['f']!r} was invoked")
        done.append(Operation(process, invoke["f"], event["type"], invoke["value"], event["value"],
                              invoke["time_ns"], event["time_ns"] if event["type"] != INFO else None,
                              invoke["index"], event["index"], event.get("error")))
    for invoke in open_.values():
        done.append(Operation(invoke["process"], invoke["f"], INFO, invoke["value"], invoke["value"],
                              invoke["time_ns"], None, invoke["index"], None))
    done.sort(key=lambda operation: operation.invoke_index)
    return done


def counts(events: Iterable[dict]) -> dict[str, int]:
    """How many operations completed ok / fail / info (an unfinished one counts as info)."""
    tally = {OK: 0, FAIL: 0, INFO: 0}
    for operation in operations(events):
        tally[operation.type] += 1
    return tally
