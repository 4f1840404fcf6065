"""A peer stream's inbound path on its own, server side only: CPU per consensus message that
arrives alone (as each replica's REPLICATE_RESPONSE reaches the leader at 100 connections x 1).

    python -m benchmarks.peerpoll_links [--rounds N] [--streams S] [--messages M]

Runs the broker's :class:`~trio_broker._runtime._connections.ConnectionServer` on 127.0.0.1:
``S`` connections open with PEER_HELLO and are read by the real
:func:`~trio_broker._runtime._peers.read_peer_stream`, whose step only counts. The client is a
separate process (one blocking thread) that sends the streams one REPLICATE_RESPONSE each in
turn, spaced (a sleep between sends, ``SPACING``) so that every message is its own receive,
as at one request in flight. The figure is the server's process CPU per message
(``time.process_time``; the client is not part of it) and the trio task steps per message.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import statistics
import time
from typing import Any

import orjson
import trio

from trio_broker._cli._node import GC_THRESHOLDS
from trio_broker._core._raft_messages import ReplicateResponse
from trio_broker._protocol import FrameDecoder, encode_frame
from trio_broker._protocol._consensus import encode_message
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._connections import ConnectionServer
from trio_broker._runtime._peers import read_peer_stream
from trio_broker._runtime._security import Security

SELF = "B-AAAAA"
SPACING = 50e-6
"""The client's sleep between sends (about 100 µs here with the sleep's own cost): every
message its own receive, the client off the CPU meanwhile."""


def _senders(streams: int) -> list[str]:
    return [f"B-{chr(66 + index // 26)}{chr(65 + index % 26)}AAA" for index in range(streams)]


def _client(port: int, streams: int, messages: int) -> None:
    """(The child process) open the streams, then send each one message in turn, spaced."""
    socks = []
    for sender in _senders(streams):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hello = {"operation": "PEER_HELLO", "broker_id": sender, "cluster_id": "G-AAAAA"}
        sock.sendall(encode_frame(orjson.dumps(hello)))
        sock.recv(1 << 16)
        socks.append((sock, sender))
    frames = [
        [
            encode_frame(
                encode_message(
                    ReplicateResponse(
                        src=sender,
                        dst=SELF,
                        term=3,
                        cluster_version=1,
                        success=True,
                        match_index=1000 + n,
                    ),
                    "G-AAAAA",
                )
            )
            for n in range(64)
        ]
        for _, sender in socks
    ]
    for n in range(messages):
        index = n % streams
        socks[index][0].sendall(frames[index][n % 64])
        time.sleep(SPACING)
    for sock, _ in socks:
        sock.close()


class _Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: Any) -> None:
        self.steps += 1


async def _serve(streams: int, messages: int) -> tuple[float, float]:
    config = BrokerConfig(data_dir="unused", port=0)
    stepped = 0
    done = trio.Event()

    def step(message: Any) -> None:
        nonlocal stepped
        stepped += 1
        if stepped == messages:
            done.set()

    async def serve_peer(stream: Any, decoder: FrameDecoder, peer: str, sender: str) -> bool:
        return await read_peer_stream(
            stream,
            decoder,
            step,
            peer=peer,
            sender=sender,
            self_id=SELF,
            max_frame=config.max_frame,
            step_of=lambda group_id: step,
        )

    server = ConnectionServer(
        config,
        Security(),
        broker_id=SELF,
        cluster_id="G-AAAAA",
        handle=None,  # type: ignore[arg-type]
        handle_many=None,  # type: ignore[arg-type]
        handle_lone=None,  # type: ignore[arg-type]
        accept_peer=lambda hello, peer: None,
        serve_peer=serve_peer,
        observe=lambda tally, now: None,
        plaintext_hint=lambda error: error,
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    instrument = _Steps()
    async with trio.open_nursery() as connections:
        await connections.start(server.serve, listeners, connections)
        pid = os.fork()
        if pid == 0:  # (the client)
            try:
                _client(port, streams, messages)
            finally:
                os._exit(0)
        await trio.sleep(0.3)  # (the streams open)
        trio.lowlevel.add_instrument(instrument)
        started = time.process_time()
        with trio.fail_after(120):
            await done.wait()
        cpu = time.process_time() - started
        trio.lowlevel.remove_instrument(instrument)
        await trio.to_thread.run_sync(os.waitpid, pid, 0)
        await server.shutdown(connections)
    return cpu / messages * 1e6, instrument.steps / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--messages", type=int, default=40_000)
    args = parser.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)
    results = [trio.run(_serve, args.streams, args.messages) for _ in range(args.rounds)]
    cpus = [cpu for cpu, _ in results]
    print(
        f"streams {args.streams}: server CPU per message µs "
        + " / ".join(f"{cpu:.2f}" for cpu in cpus)
        + f" (median {statistics.median(cpus):.2f}, best {min(cpus):.2f});"
        + f" trio task steps per message {statistics.median(s for _, s in results):.3f}"
    )


if __name__ == "__main__":
    main()
