"""``PolledSocket.receive_some`` keeps ``SocketStream.receive_some``'s contract when the
poller reads for it: never more than ``max_bytes``, and what is left after a read that
filled them is read next without waiting for an edge that will not come."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_broker._runtime import _poller
from trio_broker._runtime._poller import PolledSocket, Poller

pytestmark = pytest.mark.skipif(not _poller.AVAILABLE, reason="the poller needs epoll (Linux)")


async def test_a_read_by_the_poller_takes_at_most_what_the_task_asked_for():
    with trio.fail_after(5):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            poller = Poller()
            await nursery.start(poller.run)
            client = await trio.open_tcp_stream("127.0.0.1", port)
            server_stream = await listeners[0].accept()
            polled = PolledSocket(server_stream, poller)  # type: ignore[arg-type]
            got: list[bytes] = []

            async def read() -> None:
                got.append(await polled.receive_some(10))

            async with trio.open_nursery() as reading:
                reading.start_soon(read)
                await trio.testing.wait_all_tasks_blocked()
                assert polled._task is not None  # parked with the poller
                await client.send_all(bytes(range(100)))
            assert len(got[0]) <= 10
            while sum(map(len, got)) < 100:  # (no more bytes arrive: no more edges)
                got.append(await polled.receive_some(10))
                assert len(got[-1]) <= 10
            assert b"".join(got) == bytes(range(100))
            polled.detach()
            await client.aclose()
            await server_stream.aclose()
            nursery.cancel_scope.cancel()
        for listener in listeners:
            await listener.aclose()
