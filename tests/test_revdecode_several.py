"""A broker of several groups over plain TCP: every lone APPEND the poller decodes is left to
its connection's task (``handle_lone`` answers None there: the host routes it through
``handle_many``), which takes the request the poller decoded. Each message, a string or an
object, is stored in its own queue, under the sequence number its answer gave, and read back
as sent."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from tests.test_poller_connections import pytestmark  # noqa: F401  (no epoll: skipped)
from trio_broker._protocol import FrameDecoder, encode_frame
from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker._runtime._connections import ConnectionServer


async def _call(stream: trio.SocketStream, decoder: FrameDecoder, obj: Any) -> Any:
    await stream.send_all(encode_frame(orjson.dumps(obj)))
    while (frame := decoder.next_frame()) is None:
        data = await stream.receive_some(1 << 16)
        assert data, "closed"
        decoder.feed(data)
    return orjson.loads(frame)


async def test_lone_appends_left_to_the_task_on_several_groups_are_stored_as_sent(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    left = []
    make = ConnectionServer._fast_lone

    def counted(self: ConnectionServer, polled: Any, *args: Any) -> Any:
        fast = make(self, polled, *args)

        def watched(data: bytes) -> bool:
            served = fast(data)
            if not served and polled.decoded is not None:
                left.append(data)
            return served

        return watched

    monkeypatch.setattr(ConnectionServer, "_fast_lone", counted)
    config = BrokerConfig(data_dir=tmp_path / "b", port=0, groups=3)
    with trio.fail_after(20):
        async with open_broker(config) as broker:
            assert broker.host is not None and broker.host.several
            stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
            decoder = FrameDecoder(1 << 24)
            queues: list[str] = []
            for _ in range(400):  # (until the groups have their leader)
                answer = await _call(stream, decoder, {"operation": "CREATE_QUEUE"})
                if answer["status"] == "success":
                    queues.append(answer["queue_id"])
                    if len(queues) == 6:
                        break
                else:
                    await trio.sleep(0.02)
            assert len(queues) == 6
            sent: dict[str, list[tuple[int, Any]]] = {queue: [] for queue in queues}
            for index in range(48):
                queue = queues[index % len(queues)]
                data: Any = f"m{index}" if index % 4 else {"n": [index, "x"]}
                request = {"operation": "APPEND", "queue_name": queue, "data": data}
                answer = await _call(stream, decoder, request)
                assert answer["status"] == "success", answer
                sent[queue].append((answer["sequence_num"], data))
            for queue, messages in sent.items():
                for sequence_num, data in messages:
                    request = {"operation": "READ", "queue_name": queue, "client_id": "c"}
                    answer = await _call(stream, decoder, request)
                    assert (answer.get("sequence_num"), answer.get("data")) == (
                        sequence_num,
                        data,
                    ), (queue, answer)
            await stream.aclose()
    assert len(left) >= 48  # (every APPEND was decoded by the poller, left to the task)
