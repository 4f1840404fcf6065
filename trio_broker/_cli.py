"""``python -m trio_broker``: run a broker node, talk to brokers as a client, or benchmark."""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from ._node_options import SettingsError, add_arguments, resolve
from ._processes import start_node, stop_nodes
from ._runtime import (
    DEFAULT_DATA_DIR,
    DEFAULT_HOST,
    DEFAULT_PORT,
    BrokerConfig,
    IdentityMismatch,
    JoinFailed,
    configure_logging,
    open_broker,
)
from ._runtime._log import log_event
from ._runtime._security import SecurityConfigError
from ._storage import DataDirInUse, SchemaTooNew


def _add_node_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "node",
        help="run one broker",
        description="Run one broker. With no arguments: a single-node cluster on "
        f"{DEFAULT_HOST}:{DEFAULT_PORT} storing its data in ./{DEFAULT_DATA_DIR}.",
    )
    add_arguments(p)


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


_NODE_FAILURES = (
    DataDirInUse,
    IdentityMismatch,
    SchemaTooNew,
    JoinFailed,
    SecurityConfigError,
    OSError,
)
"""Failures a node reports in one line and exits 1, rather than with a traceback."""


def run_node(args: argparse.Namespace) -> int:
    try:
        config, node_only, sources = resolve(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(node_only["log_level"], node_only["log_format"])
    settings = {k: getattr(config, k, node_only.get(k)) for k in sources}
    log_event(
        logging.INFO,
        "broker.settings",
        **{k: f"{v}({sources[k]})" if sources[k] != "default" else v for k, v in settings.items()},
    )
    _raise_fd_limit()
    try:
        trio.run(_run_node, config)
    except BaseException as exc:
        leaf = _leaf(exc, _NODE_FAILURES)
        if leaf is None:
            raise
        if isinstance(leaf, OSError):
            print(f"error: cannot listen on {config.host}:{config.port}: {leaf}", file=sys.stderr)
        else:
            print(f"error: {leaf}", file=sys.stderr)
        return 1
    return 0


def _leaf(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of one of ``kinds`` in ``exc`` or the groups nested in it."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _leaf(inner, kinds)) is not None:
                return found
    return None


def _add_cluster_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cluster",
        help="start a local cluster of broker processes, for trying things out",
        description="Start NODES broker processes on 127.0.0.1, the first founding the "
        "cluster and the others joining it; Ctrl-C stops them all.",
    )
    p.add_argument("--nodes", type=int, default=3, help="(%(default)s)")
    p.add_argument("--base-port", type=int, default=9001, help="first port (%(default)s)")
    p.add_argument(
        "--data-dir",
        default="trio-broker-cluster",
        help="one sub-folder per broker in here (./%(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(%(default)s)",
    )


async def _run_cluster(args: argparse.Namespace) -> None:
    base = Path(args.data_dir)
    processes = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            for i in range(args.nodes):
                process, ready = await start_node(
                    base / f"node-{i + 1}",
                    args.base_port + i,
                    seed=args.base_port if i else None,
                    log_level=args.log_level,
                )
                processes.append(process)
                print(ready, flush=True)
            seeds = ",".join(f"127.0.0.1:{args.base_port + i}" for i in range(args.nodes))
            print(
                f"cluster of {args.nodes} brokers running; seeds {seeds}; Ctrl-C stops it",
                flush=True,
            )
            async for _ in signals:
                break
        finally:
            await stop_nodes(processes)


def run_cluster(args: argparse.Namespace) -> int:
    try:
        trio.run(_run_cluster, args)
    except BaseException as exc:
        leaf = _leaf(exc, (RuntimeError, OSError, trio.TooSlowError))
        if leaf is None:
            raise
        print(f"error: {leaf}", file=sys.stderr)
        return 1
    return 0


def _add_backup_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "backup",
        help="copy a broker's data (while it runs) to a backup file",
        description="Write a consistent copy of the database of the broker whose data is in "
        "--data-dir to OUTPUT. The broker may be running. See docs/operations.md.",
    )
    p.add_argument("output", type=Path, help="the backup file to create (never overwritten)")
    p.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))
    p = subparsers.add_parser(
        "restore",
        help="start a recovered cluster's first broker from a backup",
        description="Create --data-dir from BACKUP: the backup's cluster and applied state, "
        "a new broker id, the only voter. Start it with `node --data-dir ...`, then join the "
        "other brokers to it with `node --seed`. See docs/operations.md.",
    )
    p.add_argument("backup", type=Path, help="a file written by `backup`")
    p.add_argument("--data-dir", type=Path, required=True, help="a new, empty data folder")
    p.add_argument("--broker-id", help="the restored broker's id (default: a new one)")


def run_backup(args: argparse.Namespace) -> int:
    from ._ids import BROKER_ID_RE, new_broker_id
    from ._storage._backup import BackupError, backup, restore

    try:
        if args.command == "backup":
            info = backup(args.data_dir, args.output)
            print(
                f"backed up broker {info.broker_id} of cluster {info.cluster_id} to "
                f"{args.output}: applied index {info.applied_index}, {info.queues} queues, "
                f"{info.messages} messages"
            )
            return 0
        broker_id = args.broker_id or new_broker_id()
        if not BROKER_ID_RE.fullmatch(broker_id):
            raise BackupError(f"--broker-id must look like {BROKER_ID_RE.pattern}")
        info = restore(args.backup, args.data_dir, broker_id)
    except (BackupError, DataDirInUse, SchemaTooNew, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"restored cluster {info.cluster_id} into {args.data_dir} as broker {info.broker_id}, "
        f"its only voter: applied index {info.applied_index}, {info.queues} queues, "
        f"{info.messages} messages; start it with: python -m trio_broker node "
        f"--data-dir {args.data_dir}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trio_broker", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_node_parser(subparsers)
    _add_cluster_parser(subparsers)
    from ._bench import add_bench_parser
    from ._cli_client import add_client_parser

    add_client_parser(subparsers)
    add_bench_parser(subparsers)
    _add_backup_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "node":
        return run_node(args)
    if args.command == "client":
        from ._cli_client import run_client

        return run_client(args)
    if args.command == "cluster":
        return run_cluster(args)
    if args.command == "bench":
        from ._bench import run_bench

        return run_bench(args)
    if args.command in ("backup", "restore"):
        return run_backup(args)
    raise AssertionError(args.command)  # pragma: no cover
