"""`aurora-db torture`: Jepsen-style workloads run against a real cluster while a nemesis injects
faults; every operation is recorded as invoke / ok / fail / info, and each history is checked
against a model (history.py, the checkers, workloads.py, nemesis.py, runner.py)."""
