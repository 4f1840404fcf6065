"""``python -m trio_broker bench``'s arguments, apart from the bench (``_bench``) so that
building the command line's parser does not import trio and the load generator."""

from __future__ import annotations

from typing import Any

WORKLOADS = (
    "pipelined",
    "connections",
    "sequential",
    "batch-appends",
    "reads",
    "batch-reads",
    "failover",
    "groups",
)


def add_bench_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="run the standard benchmarks against a local cluster")
    p.add_argument("--seed", metavar="HOST:PORT", help="target a running cluster's leader instead")
    p.add_argument(
        "--nodes", type=int, default=3, help="brokers in the local cluster (%(default)s)"
    )
    p.add_argument("--seconds", type=float, default=5.0, help="per workload (%(default)s)")
    p.add_argument(
        "--generators",
        type=int,
        default=0,
        help="load generator processes per workload (default: one per core)",
    )
    p.add_argument(
        "--only",
        metavar="NAME,...",
        help=f"run only these workloads, in the usual order ({','.join(WORKLOADS)})",
    )
    p.add_argument("--output", help="also write the figures as JSON to this file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
