"""``python -m trio_broker node``: run one broker until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import resource
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from .._runtime._config import BrokerConfig
from .._runtime._log import configure_logging, log_event
from .._runtime._security import SecurityConfigError
from ._exit import EXIT_ERROR, EXIT_OK, EXIT_USAGE, leaf
from ._node_options import SettingsError, resolve
from ._seeds import format_seed


def _raise_fd_limit() -> None:
    """Let the broker hold as many connections as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


GC_THRESHOLDS = (50_000, 20, 100)
"""The node's cyclic garbage collector thresholds (Python's are 700, 10, 10). A broker's
objects are freed by reference counting; at the default thresholds the collector still ran
237 young collections per 71,680 pipelined appends on one broker, 1.28 µs per append, against
0.18 µs at these (docs/performance-history.md, "Per-replica Python"). Set by the node command only:
a program embedding the broker keeps its own."""


SWITCH_INTERVAL = 0.0005
"""How long (seconds) a thread that wants the GIL waits before it asks the holder to let go
(Python's default is 0.005). A broker has two threads that run Python, the event loop's and
the storage thread's (a transaction's own Python, between its SQLite calls). Measured on the
"100 connections x 1 in flight" workload, alternated with the default in 12 pairs of runs on
a loaded machine (load average 7 to 11): appends/s higher in 7, equal in 3, lower in 2
(median 2,454 -> 3,334/s), broker CPU per request lower in 7 (median 146.2 -> 123.1 µs);
pipelined and sequential appends unchanged within their noise (docs/performance-history.md, "100
connections: the fsync on the loop, and the GIL's switch interval": to be measured again on
a quiet machine). Set by the node command only, as GC_THRESHOLDS."""


def _tune_interpreter() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL)


async def _run_node(config: BrokerConfig) -> None:
    from .._runtime import open_broker

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as stopping:
            async with open_broker(config) as broker:
                print(
                    f"trio_broker node {broker.broker_id} of cluster {broker.cluster_id} "
                    f"listening on {config.host}:{broker.port}, data in "
                    f"{config.data_dir.resolve()}",
                    flush=True,
                )
                gc.freeze()  # what start-up built lives as long as the node
                async for signum in signals:
                    log_event(logging.INFO, "broker.signal", signal=signal.Signals(signum).name)
                    break
                # The broker stops as this block ends (bounded: docs/architecture.md); a signal
                # meanwhile is noted, not left pending for the receiver to raise again once it
                # closes (a traceback for SIGINT, a death by signal for SIGTERM).
                stopping.start_soon(_note_signals_while_stopping, signals)
            stopping.cancel_scope.cancel()


async def _note_signals_while_stopping(signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        log_event(
            logging.INFO,
            "broker.signal",
            signal=signal.Signals(signum).name,
            detail="already stopping: the stop goes on",
        )


def _node_failures() -> tuple[type[BaseException], ...]:
    """Failures a node reports in one line and exits 1, rather than with a traceback (the
    broker's modules are imported only by the commands that run one)."""
    from .._runtime import IdentityMismatch, JoinFailed
    from .._storage import DataDirInUse, SchemaTooNew, StorageDamaged, StorageFailed

    return (
        StorageFailed,
        DataDirInUse,
        IdentityMismatch,
        SchemaTooNew,
        JoinFailed,
        SecurityConfigError,
        StorageDamaged,
        OSError,
    )


START_ROOM = 1024 * 1024
"""Free bytes below which a node that failed to start blames its full disk: SQLite needs room
for its write-ahead log and its index (``-wal``, ``-shm``) to open the database at all."""


def full_disk_at_start(config: BrokerConfig, exc: BaseException) -> str | None:
    """The line that says a node could not start because its data directory's filesystem is
    full (``exc`` being what it failed with), or None when there is room."""
    try:
        free, _ = config.disk_space(config.data_dir)
    except OSError:
        return None
    if free >= START_ROOM:
        return None
    return (
        f"cannot start on {config.data_dir}: its filesystem is full ({free} bytes free; SQLite "
        f"needs about {START_ROOM // 1024} KiB to open its database): free some space, then "
        f"start again ({exc!r})"
    )


def loggable(value: Any) -> Any:
    """A setting as a log field: numbers, booleans and strings as themselves (so JSON logs
    keep ``"port": 9101``), paths as strings, seeds as ``HOST:PORT`` strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [format_seed(v) if isinstance(v, tuple) else loggable(v) for v in value]
    return value


def _failed_at_start(config: BrokerConfig, exc: BaseException) -> BaseException | None:
    """A write that may have lost writes, failed while the broker started (before its
    driver runs: say, the replay of a shared log into a group's file): as a failure while it
    runs, marked and reported (docs/reliability.md, "A failed fsync stops the broker")."""
    from .._storage._failed import StorageFailed, lost_writes, write_marker

    pending, failed = [exc], None
    while pending and failed is None:
        e = pending.pop()
        if isinstance(e, BaseExceptionGroup):
            pending.extend(e.exceptions)
        elif lost_writes(e):
            failed = e
    if failed is None:
        return None
    failure = StorageFailed.from_error(failed, str(config.data_dir))
    marker = write_marker(config.data_dir, failure)
    failure.reported = True
    log_event(
        logging.CRITICAL,
        "storage.failed",
        file=failure.file,
        code=failure.code,
        error=failure.error,
        marker=str(marker) if marker is not None else "not written",
        action="not starting; replace the disk, then data reset and rejoin",
    )
    return failure


def log_settings(config: BrokerConfig, node_only: dict[str, Any], sources: dict[str, str]) -> None:
    """One ``broker.settings`` event: every setting's value, and where the ones that are not
    defaults came from (``sources``: flag, env or file)."""
    values = {k: loggable(getattr(config, k, node_only.get(k))) for k in sources}
    given = {k: source for k, source in sources.items() if source != "default"}
    log_event(logging.INFO, "broker.settings", **values, sources=given)


def run_node(args: argparse.Namespace) -> int:
    try:
        config, node_only, sources = resolve(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(node_only["log_level"], node_only["log_format"])
    log_settings(config, node_only, sources)
    _raise_fd_limit()
    _tune_interpreter()
    try:
        trio.run(_run_node, config)
    except BaseException as exc:
        failure = leaf(exc, (Exception,))
        full = None if failure is None else full_disk_at_start(config, failure)
        if full is not None:
            print(f"error: {full}", file=sys.stderr)
            return EXIT_ERROR
        from .._storage import StorageDamaged, StorageFailed

        found = (
            leaf(exc, (StorageFailed,))
            or _failed_at_start(config, exc)
            or leaf(exc, _node_failures())
        )
        if found is None:
            raise
        if isinstance(found, StorageFailed):  # "A failed fsync stops the broker"
            if not found.reported:  # (a refused start: the run that failed logged it)
                log_event(logging.CRITICAL, "storage.failed_before", error=str(found))
            print(found.report(str(config.data_dir)), file=sys.stderr)
        elif isinstance(found, StorageDamaged):  # docs/reliability.md, "Damaged data"
            log_event(logging.CRITICAL, "storage.damaged_at_start", error=str(found))
            print(found.report(str(config.data_dir)), file=sys.stderr)
        elif isinstance(found, OSError):
            print(f"error: cannot listen on {config.host}:{config.port}: {found}", file=sys.stderr)
        else:
            print(f"error: {found}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
