"""The requests of one receive decided together (``Runs.handle_many`` and the driver's
``propose_many``) are answered exactly as the one-by-one path answers them: the same
responses and errors, in the same order, and the same log (docs/performance.md).

Real brokers on 127.0.0.1: the same pipelined receive goes to two fresh queues of one broker,
once through the batch path and once with it turned off.
"""

from __future__ import annotations

from typing import Any

import orjson
import trio
import trio.testing

from trio_broker._protocol import decode_request
from trio_broker._protocol._messages import Appended
from trio_broker._runtime import BrokerConfig, open_broker

from .wire import RawConnection, create_queue

DEADLINE = 20
MAX_FRAME = 2048  # values above max_data_bytes (MAX_FRAME - 256) are refused, frames are not


def _receive_of(queue_id: str) -> list[dict[str, Any]]:
    """One pipelined receive: APPENDs (with headers too), APPEND_BATCH, READs, ACK and SEEK
    with refusals mid-run (too large, a producer sequence without its producer, a bad
    max_messages, a SEEK with two targets, an empty client id, headers from a producer
    without an epoch), idempotent duplicates, and requests that do not join a run (a named
    queue, an unknown operation, a long poll)."""
    append = {"operation": "APPEND", "queue_name": queue_id}
    return [
        {**append, "data": 0},
        {**append, "data": 1},
        {**append, "data": "x" * (MAX_FRAME - 150)},  # TOO_LARGE, refused mid-run
        {**append, "data": 2, "producer_id": "P-1", "producer_seq": 1},
        {**append, "data": 2, "producer_id": "P-1", "producer_seq": 1},  # a duplicate
        {**append, "data": 3, "producer_seq": 5},  # BAD_REQUEST: no producer_id
        {**append, "data": 4},
        {"operation": "NOPE"},
        {**append, "data": 5},
        {"operation": "READ", "queue_name": queue_id, "client_id": "C-BATCH"},
        {"operation": "READ", "queue_name": queue_id, "client_id": "C-BATCH"},
        {"operation": "READ", "queue_name": queue_id, "client_id": "C-BATCH", "max_messages": 0},
        {"operation": "READ", "queue_name": queue_id, "client_id": "C-2", "mode": "peek"},
        {"operation": "READ", "queue_name": queue_id, "client_id": "C-2", "max_messages": 2},
        {"operation": "READ", "queue_name": queue_id, "client_id": "C-3", "wait_ms": 1},
        {**append, "data": 6},
        {"operation": "APPEND", "queue_name": "no-such-queue", "data": 7},
        {**append, "data": 8, "headers": {"k": "v"}},
        {**append, "data": 9},
        {"operation": "APPEND_BATCH", "queue_name": queue_id, "values": [10, 11]},
        {**append, "data": 12},
        {**append, "data": 13},
        {"operation": "ACK", "queue_name": queue_id, "client_id": "C-BATCH", "sequence_num": 4},
        {"operation": "SEEK", "queue_name": queue_id, "client_id": "C-2", "to": "start"},
        {"operation": "SEEK", "queue_name": queue_id, "client_id": "C-2", "to": "end"},
        {"operation": "SEEK", "queue_name": queue_id, "client_id": "C-4", "to": "start"},
        {"operation": "SEEK", "queue_name": queue_id, "client_id": "C-4", "to": "x"},  # refused
        {"operation": "ACK", "queue_name": queue_id, "client_id": "", "sequence_num": 1},  # refused
        {**append, "data": 14, "headers": {"k": "v"}, "producer_id": "P-2", "producer_seq": 0},
        {"operation": "READ", "queue_name": queue_id, "client_id": "C-BATCH"},
        {"operation": "READ", "queue_name": queue_id, "client_id": "C-2"},
        {"operation": "READ", "queue_name": queue_id, "client_id": "C-4"},
        {"operation": "SEEK", "queue_name": "no-such-queue", "client_id": "C-2", "to": "start"},
    ]


async def _answers(port: int, requests: list[dict[str, Any]]) -> list[Any]:
    conn = await RawConnection.open(port)
    with trio.fail_after(DEADLINE):
        await conn.send(*requests)
        answers = [await conn.receive() for _ in requests]
    await conn.aclose()
    return answers


async def test_a_receive_decided_together_is_answered_as_one_by_one(tmp_path):
    config = BrokerConfig(data_dir=tmp_path / "b", port=0, max_frame=MAX_FRAME)
    async with open_broker(config) as broker:
        server = broker.connections
        handle_many = server._handle_many
        assert handle_many is not None
        runs: list[int] = []

        async def counted(requests: list[Any], session: Any, answered: Any) -> Any:
            runs.append(len(requests))
            return await handle_many(requests, session, answered)

        server._handle_many = counted
        propose_many = broker.driver.propose_many
        proposed: list[list[str]] = []

        async def recorded(commands: list[Any]) -> Any:
            proposed.append([type(c).__name__ for c in commands])
            return await propose_many(commands)

        broker.driver.propose_many = recorded  # type: ignore[method-assign]
        batched_queue = await create_queue(broker.port)
        batched = await _answers(broker.port, _receive_of(batched_queue))
        assert max(runs) >= 5, runs  # the batch path was taken, refusals within a run
        # READs joined the APPENDs' runs (the messages form as ReadRecords).
        assert ["AppendMessage", "ReadNext", "ReadNext", "ReadRecords", "ReadRecords"] in proposed
        # So did appends with headers, APPEND_BATCH, ACK and SEEK.
        assert [
            *["Publish", "AppendMessage", "AppendBatch", "AppendMessage", "AppendMessage"],
            *["Ack", "Seek", "Seek", "Seek", "ReadNext", "ReadNext", "ReadNext"],
        ] in proposed

        server._handle_many = None  # one request at a time, as before
        runs.clear()
        single_queue = await create_queue(broker.port)
        single = await _answers(broker.port, _receive_of(single_queue))
        assert not runs

        assert batched == single
        codes = [a.get("code") for a in batched]
        assert codes.count("TOO_LARGE") == 1 and codes.count("BAD_REQUEST") == 5
        assert codes.count("QUEUE_NOT_FOUND") == 2 and codes.count("UNKNOWN_OPERATION") == 1
        assert codes.count(None) == len(batched) - 9
        reads = [
            a
            for r, a in zip(_receive_of(batched_queue), batched, strict=True)
            if r["operation"] == "READ"
        ]
        assert reads[:2] == [
            {"status": "success", "sequence_num": 1, "data": 0},
            {"status": "success", "sequence_num": 2, "data": 1},
        ]
        assert reads[5]["status"] == "success"  # the long poll found a message at once
        assert batched[4] == {"status": "success", "sequence_num": 3, "duplicate": True}
        # The positions moved in request order within the run: C-BATCH past its ACK of 4,
        # C-2 back to the start (then to the end, then nothing left), C-4 to the start.
        assert [r.get("sequence_num") for r in reads[-3:]] == [5, None, 1]
        assert reads[-2] == {"status": "success", "message": "no_messages"}
        # And the same messages, in the same order, went into each queue's log.
        peek = {"operation": "READ", "client_id": "C-PEEK", "max_messages": 20, "mode": "peek"}
        logs = [
            await _answers(broker.port, [{**peek, "queue_name": q}])
            for q in (batched_queue, single_queue)
        ]
        assert logs[0] == logs[1] and len(logs[0][0]["messages"]) == 12


async def test_a_batch_refused_as_a_whole_reaches_every_request(tmp_path):
    """A refusal of the whole run (here the broker shutting down: UNAVAILABLE) answers each
    request of it, in order, as the one-by-one path does."""
    config = BrokerConfig(data_dir=tmp_path / "b", port=0)
    async with open_broker(config) as broker:
        queue_id = await create_queue(broker.port)
        append = {"operation": "APPEND", "queue_name": queue_id}
        requests = [{**append, "data": i} for i in range(6)]
        answers = []
        driver = broker.driver
        real = driver.node

        class _Follower:  # the core as a follower sees it: it does not lead
            is_leader = False
            transfer_target = None

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        for handle_many in (broker.connections._handle_many, None):
            broker.connections._handle_many = handle_many
            driver.node = _Follower()  # type: ignore[assignment]
            try:
                answers.append(await _answers(broker.port, requests))
            finally:
                driver.node = real
        assert answers[0] == answers[1]
        assert [a["code"] for a in answers[0]] == ["NOT_LEADER"] * len(requests)


async def test_a_run_cancelled_midway_has_given_the_answers_of_what_it_proposed(tmp_path):
    """Shutdown cancels a connection's reader, perhaps inside a run: the requests proposed
    before that point are in the log, so their answers must already be with the writer."""
    config = BrokerConfig(data_dir=tmp_path / "b", port=0)
    async with open_broker(config) as broker:
        queue_id = await create_queue(broker.port)
        requests = [
            decode_request(orjson.dumps({"operation": "APPEND", "queue_name": q, "data": i}))
            for i, q in enumerate([queue_id, queue_id, "a-name", queue_id])
        ]

        async def stalled(_request: Any, _session: Any) -> Any:
            scope.cancel()  # (the named queue's request: decided alone, and cancelled there)
            await trio.sleep_forever()

        broker.runs.handle = stalled
        given: list[Any] = []
        with trio.CancelScope() as scope:
            await broker.runs.handle_many(requests, None, given.extend)
        assert len(given) == 2
        with trio.fail_after(DEADLINE):
            assert [await a.response() for a in given] == [Appended(1, False), Appended(2, False)]


async def test_a_converted_answer_answers_as_a_mapped_member():
    """A READ's (or a headed append's) answer in a run is one object; it answers what the
    general form, ``Answer(later=Mapped(group.member(i), convert))``, answers, known or
    waited for."""
    from trio_broker._core import _commands as cmd
    from trio_broker._core import _work_commands as work
    from trio_broker._errors import BrokerError, ErrorCode
    from trio_broker._protocol import encode_response
    from trio_broker._protocol._messages import Append, AppendBatch
    from trio_broker._runtime._answer import Answer
    from trio_broker._runtime._pending import PendingGroup
    from trio_broker._runtime._runs import ConvertedAnswer
    from trio_broker._runtime._work import Mapped, appended_answer, read_answer

    refusals = [
        cmd.CommandRejected("QUEUE_NOT_FOUND", "no queue"),
        BrokerError(ErrorCode.NOT_LEADER, "not the leader"),
    ]
    cases = [
        (
            read_answer,
            [
                work.Delivered((work.Delivery(3, b'"x"', (), 1),)),
                work.Delivered((work.Delivery(4, b"1", (("h", "v"),), 1),)),
                work.Delivered(()),
                cmd.MessageRead(2, b"[1]"),
                cmd.MessageRead(None, None),
            ],
        ),
        (appended_answer(Append("Q-1", 1)), [work.Published(7, 1, True)]),
        (appended_answer(AppendBatch("Q-1", [1, 2])), [work.Published(7, 2, False)]),
    ]
    for convert, results in cases:
        results = [*results, *refusals]
        group = PendingGroup(len(results))
        ours = [ConvertedAnswer(group, i, convert) for i in range(len(results))]
        general = [Answer(later=Mapped(group.member(i), convert)) for i in range(len(results))]
        assert [a.known() for a in ours] == [None] * len(results)
        waited: list[Any] = []
        async with trio.open_nursery() as nursery:

            async def wait_first(answer: Answer, into: list[Any]) -> None:
                into.append(await answer.response())

            nursery.start_soon(wait_first, ours[0], waited)
            await trio.testing.wait_all_tasks_blocked()
            assert not waited
            for i, result in enumerate(results):
                group.set(i, result)
        assert encode_response(waited[0]) == encode_response(await general[0].response())
        for mine, theirs in zip(ours, general, strict=True):
            assert encode_response(mine.known()) == encode_response(theirs.known())
            assert encode_response(await mine.response()) == encode_response(
                await theirs.response()
            )
