"""Receives of plain APPENDs with bad frames among them (invalid JSON, a key twice, an
unknown operation, a frame that is not an object), on a lone broker: the answers, each in
its place, and the messages stored are those of the same receives with each APPEND made one
by one (``Runs._plain_commands`` held to its per-append form), the receives' columns taken
where the frames around the bad ones allow (docs/performance-history.md, "The leader's receive held
as columns (thirteenth round)")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from trio_broker._core._append_columns import AppendColumns
from trio_broker._protocol import encode_frame
from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker._runtime._poller import AVAILABLE as POLLER
from trio_broker._runtime._runs import Runs

from .wire import RawConnection, create_queue


def _append(queue: str, value: Any) -> bytes:
    return encode_frame(orjson.dumps({"operation": "APPEND", "queue_name": queue, "data": value}))


def _receives(queue: str, other: str) -> list[bytes]:
    dup = b'{"operation":"APPEND","queue_name":"%s","data":1,"data":2}' % queue.encode()
    bad = [
        encode_frame(b'{"operation":"APPEND","queue_name":'),  # (not JSON)
        encode_frame(dup),  # (a key twice)
        encode_frame(b'{"operation":"NOPE","queue_name":"%s"}' % queue.encode()),
        encode_frame(b"[1,2]"),  # (not an object)
        encode_frame(b'"\\u00e9"'),
    ]
    receives = []
    for at, frame in enumerate(bad):
        head = [_append(queue, f"h{at}-{i}-é") for i in range(3)]
        tail = [_append(queue if at % 2 else other, f"t{at}-{i}\\") for i in range(4)]
        receives.append(b"".join([*head, frame, *tail]))
    receives.append(b"".join(_append(queue, i) for i in range(6)))  # (all plain: columns)
    return receives


async def _scenario(base: Path) -> tuple[list[Any], list[Any]]:
    answers: list[Any] = []
    async with open_broker(BrokerConfig(data_dir=base, port=0)) as broker:
        with trio.fail_after(20):
            queue = await create_queue(broker.port)
            other = await create_queue(broker.port)
            conn = await RawConnection.open(broker.port)
            for receive in _receives(queue, other):
                await conn.send_raw(receive)
                for _ in range(receive.count(b"\x00\x00")):  # (one answer a frame)
                    answer = await conn.receive()
                    assert answer is not None
                    answers.append({k: v for k, v in answer.items() if k != "message"})
            await conn.aclose()
            stored = [
                [
                    orjson.loads(v)
                    for v in await broker.driver._worker.run(
                        lambda q=q: broker.driver._store.messages(q)
                    )
                ]
                for q in (queue, other)
            ]
    return answers, stored


@pytest.mark.skipif(not POLLER, reason="a receive's frames are read together through the poller")
async def test_bad_frames_among_plain_appends_are_answered_as_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Would catch a receive held as columns across a bad frame (its answer moved, or the
    APPENDs after it numbered before the ones before it), or a bad frame's refusal lost."""
    taken = [0]
    real = Runs._plain_commands

    def as_columns(self: Runs, requests: Any) -> Any:
        commands = real(self, requests)
        taken[0] += type(commands) is AppendColumns
        return commands

    monkeypatch.setattr(Runs, "_plain_commands", as_columns)
    got = await _scenario(tmp_path / "columns")
    assert taken[0] >= 1

    def one_by_one(self: Runs, requests: Any) -> Any:
        commands = real(self, requests)
        return list(commands) if type(commands) is AppendColumns else commands

    monkeypatch.setattr(Runs, "_plain_commands", one_by_one)
    expected = await _scenario(tmp_path / "appends")
    assert got == expected
    first = [
        v
        for at in range(5)
        for v in [f"h{at}-{i}-é" for i in range(3)]
        + ([f"t{at}-{i}\\" for i in range(4)] if at % 2 else [])
    ]
    second = [f"t{at}-{i}\\" for at in (0, 2, 4) for i in range(4)]
    assert got[1] == [[*first, *range(6)], second]  # (each value where it was sent)
    statuses = [a["status"] for a in got[0]]
    assert statuses.count("error") == 5 and statuses.count("success") == 5 * 7 + 6
