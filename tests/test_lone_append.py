"""A receive of one APPEND decided without a coroutine (docs/performance-history.md, "The
leader's CPU per request (ninth round)"):

- ``Runs.lone_append`` gives, for every request ``decode_client_request`` makes of an APPEND's
  frame, the command, the refusal or the proposal that ``Runs._handle_one`` (the path before)
  gives, or None exactly where that path hands the request to the broker's ``handle`` (a
  queue by name, a broker closing) or would wait (no unit of capacity free);
- a connection asks ``handle_lone`` for a receive that is one whole frame of such an APPEND,
  and ``handle_many`` for anything else, or when ``handle_lone`` answers None; every answer
  leaves in order; a broker's connections ask its ``Runs.lone_append``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from tests.stand_in_driver import StandInDriver
from tests.test_plain_appends import FRAMES, QUEUE, _answers, _make_runs, _nested, _outcome
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._protocol import Done
from trio_broker._protocol._codec import decode_client_request
from trio_broker._runtime import open_broker
from trio_broker._runtime._answer import Answer
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._connections import ConnectionServer
from trio_broker._runtime._pending import Pending
from trio_broker._runtime._runs import AppendAnswer
from trio_broker._runtime._security import Security

from .wire import RawConnection, create_queue

NOT_LEADER = BrokerError(ErrorCode.NOT_LEADER, "not the leader", leader_id="B-BBBBB")


class _Node:
    def __init__(self, leader: bool) -> None:
        self.is_leader = leader


class _Driver(StandInDriver):
    """The stand-in, leading or not, with or without a unit of capacity free."""

    def __init__(self, leader: bool, free: bool) -> None:
        super().__init__()
        self.node = _Node(leader)  # type: ignore[assignment]
        self.free = free

    def not_leader_error(self) -> BrokerError:
        return NOT_LEADER

    def propose_now(self, command: Any) -> Pending | None:
        return super().propose_now(command) if self.free else None


def _shown(answer: Any, driver: _Driver) -> Any:
    return _answers([answer]), type(answer), driver.commands


PLAIN = [
    orjson.dumps({"operation": "APPEND", "queue_name": QUEUE, "data": "x" * 1200}),
    orjson.dumps({"operation": "APPEND", "queue_name": "orders", "data": "x"}),
    b'{"operation":"APPEND","queue_name":"Q-A","data":' + _nested(201) + b"}",
    b'{"operation":"APPEND","queue_name":"Q-A","data":' + _nested(200) + b"}",
    *FRAMES,
]


@pytest.mark.parametrize("closing", [False, True])
@pytest.mark.parametrize("leader", [True, False])
async def test_a_lone_append_is_decided_as_the_run_of_one_decides_it(closing, leader):
    decided = handed = 0
    for payload in PLAIN:
        request = _outcome(decode_client_request, payload)
        if type(request) is not tuple or type(request[0]) is not str:
            continue  # (not a PlainAppend: the connection asks handle_many)
        before, now = _Driver(leader, True), _Driver(leader, True)
        alone: list[Any] = []
        old = await _make_runs(before, closing, alone)._handle_one(request, None)
        new = _make_runs(now, closing).lone_append(request)
        if new is None:  # (handed to handle_many, whose run of one is _handle_one)
            assert alone, payload
            handed += 1
            continue
        assert not alone
        assert _shown(new, now) == _shown(old, before), payload
        decided += 1
    if closing:  # (a closing broker's handle refuses it)
        assert decided == 0 and handed > 500
    else:  # (the queues by name go to handle)
        assert decided > 500 and handed > 10


def test_a_lone_append_without_a_unit_free_is_left_to_handle_many():
    driver = _Driver(True, False)
    append = {"operation": "APPEND", "queue_name": QUEUE, "data": "x"}
    request = decode_client_request(orjson.dumps(append))
    assert _make_runs(driver).lone_append(request) is None  # type: ignore[arg-type]
    assert driver.commands == []
    driver.free = True
    answer = _make_runs(driver).lone_append(request)  # type: ignore[arg-type]
    assert type(answer) is AppendAnswer and len(driver.commands) == 1


@pytest.mark.parametrize("lone_answers", [True, False])
async def test_a_connection_asks_handle_lone_for_a_receive_of_one_append(lone_answers):
    """One APPEND a receive goes to ``handle_lone`` (then ``handle_many`` when it answers
    None); a READ, and two APPENDs in one receive, go to ``handle_many``."""
    asked: list[Any] = []

    def handle_lone(request: Any) -> Answer | None:
        asked.append(("lone", request[0]))
        return Answer(now=Done()) if lone_answers else None

    async def handle_many(requests: list[Any], session: Any, answered: Any) -> None:
        asked.append(("many", len(requests)))
        answered([Answer(now=Done()) for _ in requests])

    async def handle(request: Any, session: Any) -> Answer:  # pragma: no cover
        raise AssertionError("handle_many decides every request here")

    server = ConnectionServer(
        BrokerConfig(data_dir="unused", port=0),
        Security(),
        broker_id="B-AAAAA",
        cluster_id="G-AAAAA",
        handle=handle,
        handle_many=handle_many,
        handle_lone=handle_lone,
        accept_peer=lambda hello, peer: None,
        serve_peer=None,  # type: ignore[arg-type]  (no PEER_HELLO here)
        observe=lambda tally, now: None,
        plaintext_hint=lambda error: error,
    )
    append = {"operation": "APPEND", "queue_name": QUEUE, "data": "x"}
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as connections:
        await connections.start(server.serve, listeners, connections)
        conn = await RawConnection.open(port)
        with trio.fail_after(20):
            for _ in range(3):  # one at a time: each receive is the one frame
                assert await conn.call(append) == {"status": "success"}
            read = {"operation": "READ", "queue_name": QUEUE, "client_id": "C-1"}
            assert await conn.call(read) == {"status": "success"}
            await conn.send(append, append)
            assert [await conn.receive(), await conn.receive()] == [{"status": "success"}] * 2
        await conn.aclose()
        connections.cancel_scope.cancel()
    lone = [("lone", QUEUE)] + ([] if lone_answers else [("many", 1)])
    # (the two APPENDs sent together may arrive in one receive or two)
    tail = asked[3 * len(lone) + 1 :]
    assert asked[: 3 * len(lone) + 1] == lone * 3 + [("many", 1)]
    assert tail in ([("many", 2)], lone * 2)


async def test_a_brokers_lone_appends_are_decided_by_lone_append(ram_path):
    """On a broker, each lone APPEND to a queue id is decided by ``Runs.lone_append`` (no
    ``handle_many``), appended or refused as before; a queue by name goes to ``handle_many``."""
    config = BrokerConfig(data_dir=ram_path / "b", port=0, max_frame=2048)
    async with open_broker(config) as broker:
        queue_id = await create_queue(broker.port)
        runs = broker.runs
        lone, many = runs.lone_append, runs.handle_many
        asked: list[str] = []

        def counted_lone(request: Any) -> Answer | None:
            asked.append("lone")
            return lone(request)

        async def counted_many(requests: Any, session: Any, answered: Any) -> None:
            asked.append("many")
            await many(requests, session, answered)

        runs.lone_append = counted_lone  # type: ignore[method-assign]
        runs.handle_many = counted_many  # type: ignore[method-assign]
        conn = await RawConnection.open(broker.port)
        append = {"operation": "APPEND", "queue_name": queue_id}
        with trio.fail_after(20):
            answers = [await conn.call(append | {"data": i}) for i in range(3)]
            too_large = await conn.call(append | {"data": "x" * 1900})
            named = await conn.call(append | {"queue_name": "no-such-queue", "data": 1})
        assert answers == [{"status": "success", "sequence_num": i + 1} for i in range(3)]
        assert too_large["code"] == "TOO_LARGE" and named["code"] == "QUEUE_NOT_FOUND"
        assert asked == ["lone"] * 5 + ["many"]  # (the named queue: lone, then many)
        await conn.aclose()
