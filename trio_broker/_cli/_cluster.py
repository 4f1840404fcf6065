"""``python -m trio_broker cluster``: a local cluster of broker processes, supervised.

Every broker is a child process. One that exits while the cluster runs is reported on stderr
(which one, its pid, its status); with ``--restart`` it is started again with the same command
(its data folder remembers its identity and cluster), at most ``MAX_RESTARTS`` times within
``RESTART_WINDOW`` seconds, so a broker that cannot start is not respawned forever. When every
broker has exited for good the command exits 1; Ctrl-C (or SIGTERM) stops them all and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import attrs
import trio

from ._cluster_args import MAX_RESTARTS, RESTART_WINDOW
from ._exit import EXIT_ERROR, EXIT_OK, leaf
from ._processes import start_node, stop_nodes

RESTART_DELAY = 1.0
"""Seconds between a broker's exit and its restart."""
EXIT_GRACE = 0.5
"""Seconds an exit waits before it is reported: Ctrl-C in a terminal signals the brokers too,
and their exits then are the cluster stopping, not failures."""


def describe_exit(status: int) -> str:
    """``status 3`` or ``killed by SIGKILL``, from a returncode."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"status {status}"


@attrs.define
class _Node:
    name: str
    data_dir: Path
    port: int
    seed: int | None
    process: trio.Process | None = None
    restarts: list[float] = attrs.Factory(list)
    """When it was restarted, within the last RESTART_WINDOW seconds."""


def _say(text: str, *, error: bool = False) -> None:
    print(text, file=sys.stderr if error else sys.stdout, flush=True)


async def _start(
    node: _Node, log_level: str, groups: int = 1, replication_factor: int = 3, nodes: int = 1
) -> None:
    """Start one node; the founder (no seed) founds ``groups`` groups placed over all
    ``nodes`` brokers once they have joined, so leadership is spread from the start."""
    extra: list[str] = []
    if node.seed is None and groups > 1:
        factor = "all" if replication_factor == 0 else str(replication_factor)
        extra = ["--replication-factor", factor, "--founding-brokers", str(nodes)]
    process, ready = await start_node(
        node.data_dir,
        node.port,
        seed=node.seed,
        log_level=log_level,
        groups=groups if node.seed is None else 1,
        extra_args=extra,
    )
    node.process = process
    _say(f"{node.name} pid {process.pid}: {ready}")


class _Supervisor:
    def __init__(self, nodes: list[_Node], args: argparse.Namespace) -> None:
        self.nodes = nodes
        self.args = args
        self.stopping = False
        self.running = len(nodes)
        self.all_exited = trio.Event()

    async def watch(self, node: _Node) -> None:
        """Report the node's exits; restart it while allowed; count it out otherwise."""
        while True:
            assert node.process is not None
            status = await node.process.wait()
            await trio.sleep(EXIT_GRACE)
            if self.stopping:
                return
            _say(
                f"error: {node.name} (pid {node.process.pid}, port {node.port}) exited: "
                f"{describe_exit(status)}",
                error=True,
            )
            if not await self._restart(node):
                self.running -= 1
                if self.running == 0:
                    self.all_exited.set()
                return

    async def _restart(self, node: _Node) -> bool:
        """Start the node again, if --restart and its budget allow; whether it runs."""
        while self.args.restart:
            now = trio.current_time()
            node.restarts = [t for t in node.restarts if now - t < RESTART_WINDOW]
            if len(node.restarts) >= MAX_RESTARTS:
                _say(
                    f"error: {node.name} exited {MAX_RESTARTS} times within "
                    f"{RESTART_WINDOW:g} s; not restarting it",
                    error=True,
                )
                return False
            node.restarts.append(now)
            _say(
                f"restarting {node.name} in {RESTART_DELAY:g} s "
                f"(restart {len(node.restarts)} of at most {MAX_RESTARTS} in "
                f"{RESTART_WINDOW:g} s)",
                error=True,
            )
            await trio.sleep(RESTART_DELAY)
            try:
                await _start(node, self.args.log_level)
            except (RuntimeError, OSError, trio.TooSlowError) as exc:
                _say(f"error: {node.name} did not start again: {exc}", error=True)
                continue
            return True
        return False


async def _run_cluster(args: argparse.Namespace) -> int:
    base = Path(args.data_dir)
    nodes = [
        _Node(
            f"node-{i + 1}",
            base / f"node-{i + 1}",
            args.base_port + i,
            seed=args.base_port if i else None,
        )
        for i in range(args.nodes)
    ]
    supervisor = _Supervisor(nodes, args)
    outcome = EXIT_OK
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            for node in nodes:
                await _start(node, args.log_level, args.groups, args.replication_factor, args.nodes)
            seeds = ",".join(f"127.0.0.1:{node.port}" for node in nodes)
            _say(f"cluster of {args.nodes} brokers running; seeds {seeds}; Ctrl-C stops it")
            async with trio.open_nursery() as nursery:
                for node in nodes:
                    nursery.start_soon(supervisor.watch, node)

                async def until_signal() -> None:
                    async for _ in signals:
                        break
                    supervisor.stopping = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until_signal)
                await supervisor.all_exited.wait()
                _say("error: every broker has exited", error=True)
                outcome = EXIT_ERROR
                nursery.cancel_scope.cancel()
        finally:
            supervisor.stopping = True
            await stop_nodes([n.process for n in nodes if n.process is not None])
    return outcome


def run_cluster(args: argparse.Namespace) -> int:
    try:
        return trio.run(_run_cluster, args)
    except BaseException as exc:
        found = leaf(exc, (RuntimeError, OSError, trio.TooSlowError))
        if found is None:
            raise
        print(f"error: {found}", file=sys.stderr)
        return EXIT_ERROR
