"""What one request costs a client on this machine: ``python -m benchmarks.round_trip``.

1. a trio echo round trip, client and server in one (never idle) process;
2. a trio client (one task: send a frame, await the answer, as the previous bench did) sending
   sequential APPENDs to a local 3-broker cluster: its own CPU per request;
3. the same with a blocking socket.

docs/performance-history.md ("Where 'about 400 µs of CPU per round trip' came from") uses
these to place the "400 µs per round trip" of an earlier note.
"""

from __future__ import annotations

import functools
import resource
import socket
import tempfile
import time
from pathlib import Path

import orjson
import trio

from trio_broker._cli import _bench
from trio_broker._protocol import FrameDecoder, encode_frame

ECHOES = 5000
REQUESTS = 1500


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def echo_in_process() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        message = b"x" * 100
        before = _cpu()
        for _ in range(ECHOES):
            await stream.send_all(message)
            got = b""
            while len(got) < len(message):
                got += await stream.receive_some(65536)
        per = (_cpu() - before) / ECHOES * 1e6
        print(f"trio echo, both ends in one process: {per:.0f} us of CPU per round trip")
        nursery.cancel_scope.cancel()


async def against_brokers() -> None:
    with tempfile.TemporaryDirectory() as d:
        async with _bench._local_cluster(Path(d), 3) as members:
            port = await _bench._wait_for_leader([p for p, _ in members], 3)
            conn = await _bench._Conn.open("127.0.0.1", port)
            queue = (await conn.call({"operation": "CREATE_QUEUE"}))["queue_id"]
            request = {"operation": "APPEND", "queue_name": queue, "data": "x" * 100}
            for label in ("trio client", "blocking socket client"):
                before, started = _cpu(), time.perf_counter()
                if label == "trio client":
                    for _ in range(REQUESTS):
                        await conn.call(request)
                else:
                    with socket.create_connection(("127.0.0.1", port)) as s:
                        frame = encode_frame(orjson.dumps(request))
                        decoder = FrameDecoder()
                        for _ in range(REQUESTS):
                            s.sendall(frame)
                            while decoder.next_frame() is None:
                                decoder.feed(s.recv(65536))
                cpu = (_cpu() - before) / REQUESTS * 1e6
                wall = (time.perf_counter() - started) / REQUESTS * 1e3
                print(
                    f"{label}, sequential APPENDs to 3 brokers: {cpu:.0f} us of CPU per "
                    f"request in the client, {wall:.2f} ms each"
                )


if __name__ == "__main__":
    trio.run(echo_in_process)
    trio.run(against_brokers)
