"""The top-level command: ``python -m trio_broker`` and the ``trio-broker`` console script.

Building the parser imports only what the commands' parsers need; each command's own modules
are imported when that command runs. So ``node`` does not import the client (and anyio), and a
client command does not import the broker (``tests/test_public_api.py``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib import metadata

from ._backup import add_backup_parsers
from ._bench_args import add_bench_parser
from ._client_args import add_client_parser
from ._cluster_args import add_cluster_parser
from ._data import add_data_parser
from ._exit import EXIT_STATUS_HELP, UsageParser
from ._node_options import add_node_parser

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
    add_bench_parser(subparsers)
    add_backup_parsers(subparsers)
    add_data_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "trio-broker") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "node":
        from ._node import run_node

        return run_node(args)
    if args.command == "client":
        from ._client import run_client

        return run_client(args)
    if args.command == "cluster":
        from ._cluster import run_cluster

        return run_cluster(args)
    if args.command == "bench":
        from ._bench import run_bench

        return run_bench(args)
    if args.command in ("backup", "restore"):
        from ._backup import run_backup

        return run_backup(args)
    if args.command == "data":
        from ._data import run_data

        return run_data(args)
    raise AssertionError(args.command)  # pragma: no cover
