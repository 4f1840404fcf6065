"""``python -m trio_broker cluster``'s arguments, apart from the supervisor (``_cluster``) so
that building the command line's parser does not import trio."""

from __future__ import annotations

import argparse

from .._core._commands import MAX_GROUPS
from .._core._metadata import MAX_REPLICATION_FACTOR
from ._exit import EXIT_STATUS_HELP

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


def add_cluster_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cluster",
        help="start a local cluster of broker processes, for trying things out",
        description="Start NODES broker processes on 127.0.0.1, the first founding the "
        "cluster and the others joining it; a broker that exits is reported (and restarted, "
        "with --restart); Ctrl-C stops them all.",
        epilog=EXIT_STATUS_HELP,
    )
    p.add_argument("--nodes", type=_count, default=3, help="(%(default)s)")
    p.add_argument(
        "--groups",
        type=_groups,
        default=1,
        help="replication groups, each hosted by --replication-factor brokers, their "
        "leadership spread over the brokers (%(default)s)",
    )
    p.add_argument(
        "--replication-factor",
        type=_replication_factor,
        default=3,
        help="with several groups: on how many brokers each group lives, or 'all' for every "
        "broker (%(default)s); the groups are placed once all NODES brokers have joined",
    )
    p.add_argument("--base-port", type=_port, default=9001, help="first port (%(default)s)")
    p.add_argument(
        "--data-dir",
        default="trio-broker-cluster",
        help="one sub-folder per broker in here (./%(default)s)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help=f"restart a broker that exits (at most {MAX_RESTARTS} times in "
        f"{RESTART_WINDOW:g} s each)",
    )
    p.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(%(default)s)",
    )


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 99:
        raise argparse.ArgumentTypeError(f"must be between 1 and 99, got {text!r}")
    return value


def _groups(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_GROUPS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_GROUPS}, got {text!r}")
    return value


def _replication_factor(text: str) -> int:
    if text == "all":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer nor 'all': {text!r}") from None
    if not 1 <= value <= MAX_REPLICATION_FACTOR:
        raise argparse.ArgumentTypeError(
            f"must be between 1 and {MAX_REPLICATION_FACTOR}, or 'all', got {text!r}"
        )
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port (1-65535), got {text!r}")
    return value
