"""The leader's request path on its own, server side only: CPU per pipelined APPEND.

    python -m benchmarks.connection_path [--rounds N] [--connections C] [--window W]

Runs the broker's :class:`~trio_broker._runtime._connections.ConnectionServer` with the real
:class:`~trio_broker._runtime._runs.Runs` (framing, decoding, the checks into commands, the
outbox, the answers' encoding, the socket calls) and a stand-in for the driver that settles
every group proposed once per loop turn (group commit, no storage, no replication). The
client is a separate process (one blocking thread, frames encoded once, answers counted from
their length prefixes), so the figure is the server's CPU alone (``time.process_time`` of its
process, which the client is not part of). Also prints the trio task steps per APPEND. The
garbage collector runs with the thresholds a node sets (``_cli/_node.py``).

Unlike :mod:`benchmarks.request_path` (client and server in one loop, its own stand-in for
``Runs``), this measures the code a leader runs per request up to the driver's
``propose_many``.
"""

from __future__ import annotations

import argparse
import gc
import os
import selectors
import socket
import tempfile
import time
from typing import Any

import orjson
import trio

from trio_broker._cli._node import GC_THRESHOLDS
from trio_broker._core import _commands as cmd
from trio_broker._protocol import encode_frame
from trio_broker._runtime._answer import Answer
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._connections import ConnectionServer
from trio_broker._runtime._pending import Pending, PendingGroup, settling
from trio_broker._runtime._runs import Runs
from trio_broker._runtime._security import Security

APPEND = {"operation": "APPEND", "queue_name": "Q-AAAAABBBBB", "data": "x" * 100}


class LeaderNode:
    """A stand-in for the driver's ``RaftNode``: always the leader."""

    is_leader = True


def stand_in_runs(config: BrokerConfig, driver: Any) -> Runs:
    """The real ``Runs`` on a stand-in driver (``propose_many`` and a ``node`` is all it
    needs of one for APPENDs): no handler for other requests, never closing, its clock
    fixed."""
    return Runs(config, driver, handle=None, closing=lambda: False, wall_clock_ms=lambda: 1)  # type: ignore[arg-type]


class _Driver:
    """Settles every group proposed once per loop turn, in order (each append's sequence
    number is its position)."""

    max_group = 1024
    node = LeaderNode()

    def __init__(self) -> None:
        self.waiting: list[PendingGroup | Pending] = []
        self.sequence = 0
        self._wake = trio.Event()

    async def propose_many(self, commands: list[Any]) -> PendingGroup:
        group = PendingGroup(len(commands))
        self.waiting.append(group)
        self._wake.set()
        return group

    propose_columns = propose_many  # (a receive held as columns: only its count is read)

    async def propose(self, command: Any) -> Pending:
        """A lone request's proposal (``Runs._handle_one``)."""
        return self.propose_now(command)

    def propose_now(self, command: Any) -> Pending:
        """A lone request's proposal without waiting (``Runs.lone_append``)."""
        pending = Pending()
        self.waiting.append(pending)
        self._wake.set()
        return pending

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.lowlevel.checkpoint()  # let other connections' requests join
            waiting, self.waiting = self.waiting, []
            with settling():  # (as the driver settles a Ready's outcomes)
                for group in waiting:
                    if isinstance(group, Pending):
                        self.sequence += 1
                        group.set(cmd.MessageAppended(self.sequence))
                        continue
                    for index in range(len(group.results)):
                        self.sequence += 1
                        group.set(index, cmd.MessageAppended(self.sequence))


def _client(socks: list[socket.socket], per_connection: int, window: int) -> None:
    """Keep ``window`` APPENDs in flight on each connection until each had its count."""
    frame = encode_frame(orjson.dumps(APPEND))
    selector = selectors.DefaultSelector()
    state: dict[socket.socket, list[Any]] = {}
    for sock in socks:
        sock.setblocking(True)
        sock.sendall(frame * window)
        state[sock] = [window, 0, b""]  # sent, answered, bytes not yet a whole frame
        selector.register(sock, selectors.EVENT_READ)
    left = len(socks)
    while left:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            entry = state[sock]
            data = sock.recv(1 << 16)
            assert data, "the server closed the connection"
            buffered = entry[2] + data
            position = answered = 0
            while len(buffered) - position >= 4:
                size = int.from_bytes(buffered[position : position + 4], "big")
                if len(buffered) - position < 4 + size:
                    break
                position += 4 + size
                answered += 1
            entry[2] = buffered[position:]
            entry[1] += answered
            more = min(answered, per_connection - entry[0])
            if more > 0:
                sock.sendall(frame * more)
                entry[0] += more
            if entry[1] >= per_connection:
                selector.unregister(sock)
                left -= 1


class _Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def _run(connections: int, window: int, per_connection: int, poller: bool = True) -> float:
    with tempfile.TemporaryDirectory() as base:
        config = BrokerConfig(data_dir=base, port=0)
        driver = _Driver()
        runs = stand_in_runs(config, driver)

        async def one(request: Any, session: Any) -> Answer:
            got: list[Answer] = []
            await runs.handle_many([request], session, got.extend)
            return got[0]

        lone = getattr(runs, "lone_append", None)  # (since the ninth round)
        server = ConnectionServer(
            config,
            Security(),
            broker_id="B-AAAAA",
            cluster_id="G-AAAAA",
            handle=one,
            handle_many=runs.handle_many,
            **({} if lone is None else {"handle_lone": lone}),
            accept_peer=lambda hello, peer: None,
            serve_peer=_no_peers,
            observe=lambda tally, now: None,
            plaintext_hint=lambda error: error,
        )
        pairs = []
        with socket.create_server(("127.0.0.1", 0)) as listener:
            for _ in range(connections):
                raw = socket.create_connection(listener.getsockname())
                served, _ = listener.accept()
                pairs.append((served, raw))
        pid = os.fork()
        if pid == 0:  # the client
            try:
                _client([raw for _, raw in pairs], per_connection, window)
            finally:
                os._exit(0)
        for _, raw in pairs:
            raw.close()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(driver.run)
            if poller and hasattr(server, "start_poller"):  # (since the tenth round)
                await server.start_poller(nursery)
            started = time.process_time()
            async with trio.open_nursery() as served_connections:
                for served, _ in pairs:
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(served))
                    served_connections.start_soon(server._handle_stream, stream)
            cpu = time.process_time() - started
            nursery.cancel_scope.cancel()
        os.waitpid(pid, 0)  # noqa: ASYNC222 (the client is done: every answer was read)
        return cpu / (connections * per_connection) * 1e6


async def _no_peers(*_args: Any) -> bool:
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4000, help="per connection")
    parser.add_argument(
        "--no-poller", action="store_true", help="every connection waits through trio"
    )
    args = parser.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)
    steps = _Steps()
    runs = [
        trio.run(
            _run,
            args.connections,
            args.window,
            args.requests,
            not args.no_poller,
            instruments=[steps],
        )
        for _ in range(args.rounds)
    ]
    print(
        f"leader's request path, {args.connections} connections x {args.window} in flight: "
        f"{min(runs):.2f} us of server CPU per APPEND (best of {args.rounds}; all: "
        f"{', '.join(f'{r:.2f}' for r in runs)}); "
        f"{steps.steps / (args.rounds * args.connections * args.requests):.3f} task steps each"
    )


if __name__ == "__main__":
    main()
