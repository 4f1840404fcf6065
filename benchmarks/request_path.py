"""A connection's request path on its own, on one core: CPU per pipelined APPEND.

    python -m benchmarks.request_path [--requests N] [--connections C] [--window W]
        [--one-by-one] [--metrics]

Runs the broker's :class:`~trio_broker._runtime._connections.ConnectionServer` over real
socket pairs, in one trio loop with a minimal client (frames encoded once, answers counted
from their length prefixes, never decoded), and a stand-in for the driver: each request is
checked into its command (``_operations.append_command``, as the broker does) and answered
with a pending result that a "commit" task resolves for every request waiting, once per loop
turn (group commit, as the driver does); the requests of one receive are decided in one call
(as ``Runs.handle_many`` and the driver's ``propose_many`` do) unless ``--one-by-one``.
No storage, no replication, no metrics (``--metrics``: a real ``BrokerMetrics`` counts the
answers): what is left is the connection's own work (framing, decoding, the outbox, encoding,
the socket calls) plus the client's, which is the same on both sides of an A/B comparison.
Prints the process's CPU per request (best of ``--repeat`` runs) and the parts timed alone.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
import timeit
from collections.abc import Callable
from typing import Any

import orjson
import trio
import trio.lowlevel

from trio_broker._core import _commands as cmd
from trio_broker._protocol import Append, decode_request, encode_frame, encode_response
from trio_broker._runtime._answer import Answer, response_for
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._connections import ConnectionServer
from trio_broker._runtime._metrics import BrokerMetrics
from trio_broker._runtime._operations import append_command
from trio_broker._runtime._pending import GroupAnswer, Pending, PendingGroup
from trio_broker._runtime._security import Security

QUEUE = "Q-AAAAABBBBB"
APPEND = {"operation": "APPEND", "queue_name": QUEUE, "data": "x" * 100}


class _Commit:
    """Resolves every pending request once per loop turn, in order, like the driver's
    group commit (each append's sequence number is its position)."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.waiting: list[Any] = []
        """Pending, or (PendingGroup, index) of handle_many."""
        self.sequence = 0
        self._wake = trio.Event()

    async def handle(self, request: Any, _session: Any) -> Answer:
        command = append_command(request, self.config)
        assert isinstance(command, cmd.AppendMessage)
        pending = Pending()
        self.waiting.append(pending)
        self._wake.set()
        return Answer(later=pending)

    async def handle_many(
        self, requests: list[Any], _session: Any, answered: Callable[[list[Answer]], None]
    ) -> None:
        """As the broker's ``handle_many``: each command built once, one group for the run."""
        stamp = 1  # (the broker reads its wall clock once per run)
        commands = [
            # (a PlainAppend, since "The leader's request path without an object per APPEND":
            # its command from its queue and value's bytes, as Runs makes it)
            cmd.AppendMessage(r[0], r[1], None, None, stamp)
            if type(r) is tuple
            else append_command(r, self.config, appended_ms=stamp)
            for r in requests
        ]
        group = PendingGroup(len(commands))
        self.waiting.extend((group, i) for i in range(len(commands)))
        self._wake.set()
        answered([GroupAnswer(group, i) for i in range(len(commands))])

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.lowlevel.checkpoint()  # let other connections' requests join the group
            waiting, self.waiting = self.waiting, []
            for pending in waiting:
                self.sequence += 1
                if type(pending) is tuple:
                    pending[0].set(pending[1], cmd.MessageAppended(self.sequence))
                else:
                    pending.set(cmd.MessageAppended(self.sequence))


async def _client(stream: trio.SocketStream, requests: int, window: int) -> None:
    frame = encode_frame(orjson.dumps(APPEND))
    sent = answered = 0
    buffered = b""
    while answered < requests:
        burst = min(window - (sent - answered), requests - sent)
        if burst > 0:
            await stream.send_all(frame * burst)
            sent += burst
        data = await stream.receive_some(1 << 16)
        assert data, "the server closed the connection"
        buffered += data
        while len(buffered) >= 4:
            size = int.from_bytes(buffered[:4], "big")
            if len(buffered) < 4 + size:
                break
            buffered = buffered[4 + size :]
            answered += 1


async def _run(requests: int, connections: int, window: int, batch: bool, metrics: bool) -> float:
    with tempfile.TemporaryDirectory() as base:
        config = BrokerConfig(data_dir=base, port=0)
        commit = _Commit(config)
        server = ConnectionServer(
            config,
            Security(),
            broker_id="B-AAAAA",
            cluster_id="G-AAAAA",
            handle=commit.handle,
            handle_many=commit.handle_many if batch else None,
            accept_peer=lambda hello, peer: None,
            serve_peer=_no_peers,
            observe=BrokerMetrics(None).observe_batch if metrics else lambda tally, now: None,
            plaintext_hint=lambda error: error,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit.run)
            pairs = []
            with socket.create_server(("127.0.0.1", 0)) as listener:
                for _ in range(connections):
                    raw = socket.create_connection(listener.getsockname())
                    a, _ = listener.accept()
                    pairs.append((trio.SocketStream(trio.socket.from_stdlib_socket(a)), raw))
            for served, _ in pairs:
                nursery.start_soon(server._handle_stream, served)
            started = time.process_time()
            async with trio.open_nursery() as clients:
                for _, raw in pairs:
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
                    clients.start_soon(_client, stream, requests // connections, window)
            cpu = time.process_time() - started
            nursery.cancel_scope.cancel()
    return cpu / (requests // connections * connections) * 1e6


async def _no_peers(*_args: Any) -> bool:
    return True


def _best_us(f: Callable[[], Any], number: int = 20_000) -> float:
    return min(timeit.repeat(f, number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=64_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--one-by-one", action="store_true", help="decide each request alone (no handle_many)"
    )
    parser.add_argument("--metrics", action="store_true", help="count answers in real metrics")
    args = parser.parse_args()
    runs = [
        trio.run(
            _run,
            args.requests,
            args.connections,
            args.window,
            not args.one_by_one,
            args.metrics,
        )
        for _ in range(args.repeat)
    ]
    mode = "one by one" if args.one_by_one else "a receive at once"
    print(
        f"connection path ({mode}{', metrics' if args.metrics else ''}), "
        f"{args.connections} connections x {args.window} in flight: "
        f"{min(runs):.1f} us of CPU per APPEND (best of {args.repeat}; all: "
        f"{', '.join(f'{r:.1f}' for r in runs)}), server and client together"
    )
    payload = orjson.dumps(APPEND)
    config = BrokerConfig(data_dir=".", port=0)
    request = decode_request(payload)
    assert isinstance(request, Append)
    response = response_for(cmd.MessageAppended(12345))
    print(
        f"  decode_request(APPEND):             {_best_us(lambda: decode_request(payload)):.2f} us"
    )
    print(
        "  append_command:                     "
        f"{_best_us(lambda: append_command(request, config)):.2f} us"
    )
    print(
        "  response_for(MessageAppended):      "
        f"{_best_us(lambda: response_for(cmd.MessageAppended(12345))):.2f} us"
    )
    print(
        "  encode_frame(encode_response(...)): "
        f"{_best_us(lambda: encode_frame(encode_response(response))):.2f} us"
    )


if __name__ == "__main__":
    main()
