"""The `aurora-db` command: one entry point for every process role and tool.

Each subcommand parses its flags here and hands off to the module that owns it; importing is lazy
so `aurora-db sql` does not pay for the storage node's imports.
"""

from __future__ import annotations

import argparse
import sys

from aurora_db.constants import CACHE_PAGES_DEFAULT


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def storage_peer(text: str) -> tuple[str, str, int]:
    node_id, sep, address = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NODE_ID=HOST:PORT, got {text!r}")
    host, port = host_port(address)
    return node_id, host, port


def proxy_node(text: str) -> tuple[str, str, int, int]:
    node_id, sep, address = text.partition("=")
    host, _, ports = address.partition(":")
    port, _, admin_port = ports.partition(":")
    if not sep or not node_id or not host or not port.isdigit() or not admin_port.isdigit():
        raise argparse.ArgumentTypeError(f"expected NODE_ID=HOST:PGPORT:ADMINPORT, got {text!r}")
    return node_id, host, int(port), int(admin_port)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aurora-db", description="An Aurora-style database speaking the PostgreSQL protocol.")
    commands = parser.add_subparsers(dest="command", required=True)

    storage = commands.add_parser("storage-node", help="run one storage node (holds a segment of every PG)")
    storage.add_argument("--node-id", required=True, help="unique node name, e.g. a1")
    storage.add_argument("--az", required=True, help="availability zone: a, b or c")
    storage.add_argument("--listen", type=host_port, required=True, help="HOST:PORT for the storage protocol")
    storage.add_argument("--data", required=True, help="directory for the node's log files and epoch")
    storage.add_argument("--peer", dest="peers", type=storage_peer, action="append", default=[],
                         metavar="ID=HOST:PORT",
                         help="another storage node of the volume, for gossip and rebuild (repeat for each)")

    compute = commands.add_parser("compute-node", help="run a compute node (a writer or a reader)")
    compute.add_argument("--role", choices=["writer", "reader"], default="writer",
                         help="writer: recover the volume and take writes; reader: follow the writer's redo "
                              "stream and serve reads until promoted")
    compute.add_argument("--node-id", default="writer")
    compute.add_argument("--az", default="a", help="availability zone of this node (shown by status)")
    compute.add_argument("--promotion-tier", type=int, default=1, choices=range(16), metavar="0-15",
                         help="failover prefers the reader with the lowest tier, then the highest applied LSN")
    compute.add_argument("--listen", type=host_port, required=True, help="HOST:PORT for PostgreSQL clients")
    compute.add_argument("--admin", type=host_port,
                         help="HOST:PORT for the admin protocol (status, promote, demote) and, on the writer, "
                              "the redo stream readers follow")
    compute.add_argument("--advertise-admin", type=host_port, metavar="HOST:PORT",
                         help="the admin address other nodes reach this node at, when it differs from --admin "
                              "(a container listening on 0.0.0.0, say); a writer names it on storage for readers")
    compute.add_argument("--storage", type=storage_peer, action="append", required=True, metavar="ID=HOST:PORT",
                         help="a storage node; give all six")
    compute.add_argument("--cache-pages", type=int, default=CACHE_PAGES_DEFAULT, help="buffer cache size in pages")
    compute.add_argument("--data", help="working directory (logs only: a compute node keeps no durable state)")

    sql = commands.add_parser("sql", help="the interactive SQL shell")
    sql.add_argument("url", nargs="?", help="postgresql://user@host:port/dbname")
    sql.add_argument("--host", default=None)
    sql.add_argument("--port", type=int, default=None)
    sql.add_argument("--user", default=None)
    sql.add_argument("--dbname", default=None)
    sql.add_argument("-c", "--command", dest="sql_command", action="append", help="run SQL and exit (repeatable)")
    sql.add_argument("-f", "--file", help="run the SQL in FILE and exit")
    sql.add_argument("--reader", action="store_true",
                     help="connect to the cluster's reader endpoint: the port after the writer endpoint's (P+1)")

    proxy = commands.add_parser("proxy", help="run the proxy: a writer endpoint and a reader endpoint, "
                                              "health checks and failover")
    proxy.add_argument("--node-id", default="proxy", help="name in logs and status")
    proxy.add_argument("--writer-listen", type=host_port, required=True,
                       help="HOST:PORT of the writer endpoint (always the current writer)")
    proxy.add_argument("--reader-listen", type=host_port, required=True,
                       help="HOST:PORT of the reader endpoint (healthy readers, else the writer)")
    proxy.add_argument("--admin", type=host_port, required=True,
                       help="HOST:PORT for the admin protocol (status, failover)")
    proxy.add_argument("--node", type=proxy_node, action="append", required=True,
                       metavar="ID=HOST:PGPORT:ADMINPORT", help="a compute node (repeat for each)")
    proxy.add_argument("--health-interval-ms", type=positive_int, default=None, metavar="MS",
                       help="how often each node's admin status is asked for (default 300)")
    proxy.add_argument("--health-timeout-ms", type=positive_int, default=None, metavar="MS",
                       help="a status reply slower than this is a failed check (default 1000)")
    proxy.add_argument("--failure-threshold", type=positive_int, default=None, metavar="N",
                       help="consecutive failed checks that make a node down (default 3); one success makes "
                            "it up again")
    proxy.add_argument("--replica-lag-ms-max", type=float, default=None, metavar="MS",
                       help="a reader lagging more than this gets no new reader-endpoint connection (default 1000)")
    proxy.add_argument("--connections-max", type=positive_int, default=None, metavar="N",
                       help="client connections on both endpoints together (default 1000)")
    proxy.add_argument("--data", help="working directory (logs only: the proxy keeps no durable state)")

    up = commands.add_parser("up", help="start a local cluster (six storage nodes, a writer, readers, the proxy)")
    up.add_argument("--data", required=True, help="cluster directory (data and logs of every process)")
    up.add_argument("--port", type=int, default=None,
                    help="P, the writer endpoint clients connect to; the cluster uses P..P+26 (default 5432 for a "
                         "new cluster; an existing one keeps its own)")
    up.add_argument("--readers", type=int, default=None, choices=range(7), metavar="0-6",
                    help="reader compute nodes (default 2 for a new cluster; an existing one keeps its count, "
                         "which changes only while its compute nodes and proxy are stopped)")
    up.add_argument("--detach", action="store_true", help="return once the cluster is ready")
    up.add_argument("--cache-pages", type=int, default=None,
                    help=f"every compute node's buffer cache, in pages of 8 KiB (default {CACHE_PAGES_DEFAULT} for a "
                         "new cluster; an existing one keeps its own, and a new size applies to the compute nodes "
                         "started from then on)")
    up.add_argument("--ready-timeout", type=float, default=None, metavar="SECONDS",
                    help="how long to wait for each phase: storage nodes, writer, readers, proxy (default 60)")

    down = commands.add_parser("down", help="stop a local cluster")
    down.add_argument("--data", required=True)

    status = commands.add_parser("status", help="show every process of a local cluster")
    status.add_argument("--data", required=True)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    failover = commands.add_parser("failover", help="planned switchover: promote a reader, then demote the writer")
    failover.add_argument("--data", required=True)
    failover.add_argument("--target", default=None, metavar="NODE",
                          help="the reader to promote (default: lowest promotion tier, then highest applied LSN)")

    replace = commands.add_parser("replace-storage",
                                  help="replace a dead storage node with a new one while writes go on")
    replace.add_argument("--data", required=True)
    replace.add_argument("old", metavar="NODE", help="the dead storage node, e.g. c2")
    replace.add_argument("--node-id", default=None, help="the new node's id (default: the next free one in "
                                                          "the old node's AZ, e.g. c3)")

    torture = commands.add_parser("torture", help="Jepsen-style workloads under injected faults, with history "
                                                  "checkers (starts its own cluster unless --data is given)")
    torture.add_argument("--seconds", type=float, default=60, help="how long each workload runs (default 60)")
    torture.add_argument("--seed", type=int, default=None,
                         help="draws the fault schedule and the operations (default: random, printed)")
    torture.add_argument("--workload", action="append", default=None,
                         choices=["all", "bank", "register", "set", "list-append"],
                         help="a workload to run (repeat for several; default all four, one after another)")
    torture.add_argument("--clients", type=positive_int, default=5, help="concurrent clients (default 5)")
    torture.add_argument("--readers", type=int, default=1, choices=range(7), metavar="0-6",
                         help="reader compute nodes of the cluster torture starts (default 1; with none, "
                              "a killed writer is not failed over but restarted)")
    torture.add_argument("--faults", default=None, metavar="KIND,...",
                         help="fault kinds to draw from: kill-writer, kill-reader, kill-storage, pause, switchover "
                              "(default all; an empty string: no faults)")
    torture.add_argument("--data", default=None,
                         help="use this running cluster (made by aurora-db up) instead of starting one; its "
                              "torture_* tables are replaced")
    torture.add_argument("--output", default=None, metavar="DIR",
                         help="where the histories and results.json go (default ./torture-DATE-TIME)")
    torture.add_argument("--keep", action="store_true", help="keep the data of the cluster torture started")

    slt = commands.add_parser("sqllogictest", help="run sqllogictest scripts against a PostgreSQL-protocol server")
    slt.add_argument("files", nargs="+", metavar="FILE", help="a .test script; files run one after another")
    slt.add_argument("--host", default=None)
    slt.add_argument("--port", type=int, default=None)
    slt.add_argument("--user", default=None)
    slt.add_argument("--dbname", default=None)
    slt.add_argument("--failures", type=int, default=None, metavar="N",
                     help="how many of the first failures to show (default 10)")
    slt.add_argument("--limit-records", type=int, default=None, metavar="N",
                     help="run only the first N statements and queries of each file")
    slt.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                     help="give up on a statement after this long (default 60)")
    slt.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "storage-node":
        from storage_node.server import run
    elif args.command == "compute-node":
        from compute_node.server import run
    elif args.command == "sql":
        from aurora_db.shell import run
    elif args.command == "up":
        from aurora_db.cluster import run_up as run
    elif args.command == "down":
        from aurora_db.cluster import run_down as run
    elif args.command == "sqllogictest":
        from aurora_db.sqllogictest import run
    elif args.command == "torture":
        from aurora_db.torture.runner import run
    elif args.command == "proxy":
        from proxy.server import run
    elif args.command == "failover":
        from aurora_db.cluster import run_failover as run
    elif args.command == "replace-storage":
        from aurora_db.cluster import run_replace_storage as run
    else:
        from aurora_db.cluster import run_status as run
    return run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
