"""``python -m trio_broker``: run a broker node, talk to brokers as a client, or benchmark."""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import signal
import sys
from collections.abc import Sequence

import trio

from ._runtime import (
    DEFAULT_DATA_DIR,
    DEFAULT_HOST,
    DEFAULT_PORT,
    BrokerConfig,
    IdentityMismatch,
    configure_logging,
    open_broker,
)
from ._runtime._log import log_event
from ._storage import DataDirInUse, SchemaTooNew


def _add_node_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "node",
        help="run one broker",
        description="Run one broker. With no arguments: a single-node cluster on "
        f"{DEFAULT_HOST}:{DEFAULT_PORT} storing its data in ./{DEFAULT_DATA_DIR}.",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (%(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (%(default)s)")
    p.add_argument("--advertise-host", help="host announced to clients (default: --host)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="data directory (./%(default)s)")
    p.add_argument("--broker-id", help="B-XXXXX; generated and stored on first start if absent")
    p.add_argument("--cluster-id", help="G-XXXXX; generated and stored on first start if absent")
    p.add_argument(
        "--seed",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a member of the cluster to join (repeatable)",
    )
    p.add_argument(
        "--max-frame",
        type=int,
        default=BrokerConfig.__attrs_attrs__.max_frame.default,
        help="largest frame accepted, in bytes (%(default)s)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=BrokerConfig.__attrs_attrs__.max_connections.default,
        help="connections served at once (%(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(%(default)s)",
    )


def _raise_fd_limit() -> None:
    """Let the broker hold as many connections as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _run_node(config: BrokerConfig) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_broker(config) as broker:
            print(
                f"trio_broker node {broker.broker_id} of cluster {broker.cluster_id} "
                f"listening on {config.host}:{broker.port}, data in "
                f"{config.data_dir.resolve()}",
                flush=True,
            )
            async for signum in signals:
                log_event(logging.INFO, "broker.signal", signal=signal.Signals(signum).name)
                break


def run_node(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        config = BrokerConfig(
            host=args.host,
            port=args.port,
            advertise_host=args.advertise_host,
            data_dir=args.data_dir,
            broker_id=args.broker_id,
            cluster_id=args.cluster_id,
            seeds=args.seed,
            max_frame=args.max_frame,
            max_connections=args.max_connections,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if config.seeds:
        log_event(
            logging.WARNING,
            "broker.seeds_ignored",
            seeds=args.seed,
            reason="this version serves single-node clusters only",
        )
    _raise_fd_limit()
    try:
        trio.run(_run_node, config)
    except (DataDirInUse, IdentityMismatch, SchemaTooNew) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trio_broker", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_node_parser(subparsers)
    from ._bench import add_bench_parser
    from ._cli_client import add_client_parser

    add_client_parser(subparsers)
    add_bench_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "node":
        return run_node(args)
    if args.command == "client":
        from ._cli_client import run_client

        return run_client(args)
    if args.command == "bench":
        from ._bench import run_bench

        return run_bench(args)
    raise AssertionError(args.command)  # pragma: no cover
