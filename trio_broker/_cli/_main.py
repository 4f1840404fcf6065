"""The top-level command: ``python -m trio_broker`` and the ``trio-broker`` console script."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib import metadata

from ._backup import add_backup_parsers, run_backup
from ._client import add_client_parser, run_client
from ._cluster import add_cluster_parser, run_cluster
from ._data import add_data_parser, run_data
from ._exit import EXIT_STATUS_HELP, UsageParser
from ._node import add_node_parser, run_node

DESCRIPTION = (
    "trio_broker: a replicated, durable message-queue broker. Run a broker node, a local "
    "cluster, talk to brokers as a client, back up and restore a broker's data, or benchmark."
)


def version() -> str:
    """The installed distribution's version."""
    try:
        return metadata.version("trio-broker")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def build_parser(prog: str = "trio-broker") -> argparse.ArgumentParser:
    parser = UsageParser(prog=prog, description=DESCRIPTION, epilog=EXIT_STATUS_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_node_parser(subparsers)
    add_cluster_parser(subparsers)
    add_client_parser(subparsers)
    from ._bench import add_bench_parser

    add_bench_parser(subparsers)
    add_backup_parsers(subparsers)
    add_data_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "trio-broker") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "node":
        return run_node(args)
    if args.command == "client":
        return run_client(args)
    if args.command == "cluster":
        return run_cluster(args)
    if args.command == "bench":
        from ._bench import run_bench

        return run_bench(args)
    if args.command in ("backup", "restore"):
        return run_backup(args)
    if args.command == "data":
        return run_data(args)
    raise AssertionError(args.command)  # pragma: no cover
