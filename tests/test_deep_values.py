"""Values nested deeper than the broker stores, and the one parse of an APPEND's frame.

orjson reads up to 1024 levels of nesting but writes at most 254: a value it decoded and cannot
write back is refused with ``BAD_REQUEST`` on every path that stores a client's value, and the
other requests of the same receive are answered in order (docs/protocol.md, "APPEND")."""

from __future__ import annotations

import types
from typing import Any

import orjson
import pytest

from tests.stand_in_driver import StandInDriver
from trio_broker._core import _commands as cmd
from trio_broker._errors import ErrorCode, ProtocolError
from trio_broker._protocol import _codec
from trio_broker._protocol import _messages as m
from trio_broker._protocol._codec import decode_request, dumps_value, dumps_values
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._operations import append_command, plain_append
from trio_broker._runtime._runs import RunAnswer, Runs
from trio_broker._runtime._work import publish_command

from .wire import RawConnection, create_queue, frame

DEEPEST = b"[" * 254 + b"]" * 254
"""As deep as orjson writes (its later versions: 3.8 wrote one level more)."""
DEEP = b"[" * 300 + b"]" * 300


def test_an_append_with_a_client_id_is_parsed_once(monkeypatch):
    parses: list[bytes] = []

    def loads(payload: Any) -> Any:
        parses.append(payload)
        return orjson.loads(payload)

    counted = types.SimpleNamespace(**{k: getattr(orjson, k) for k in dir(orjson)})
    counted.loads = loads
    monkeypatch.setattr(_codec, "orjson", counted)
    old_client = b'{"operation":"APPEND","queue_name":"Q-A","data":1,"client_id":"C-1"}'
    assert decode_request(old_client) == m.Append("Q-A", 1, "C-1")
    assert len(parses) == 1


def test_a_value_deeper_than_orjson_writes_is_refused_as_a_bad_request():
    deepest, deep = orjson.loads(DEEPEST), orjson.loads(DEEP)
    assert dumps_value(deepest) == DEEPEST
    assert dumps_values([1, deepest]) == (b"1", DEEPEST)  # (one level deeper in the list)
    for refused in (lambda: dumps_value(deep), lambda: dumps_values([1, deep])):
        with pytest.raises(ProtocolError) as caught:
            refused()
        assert caught.value.code == ErrorCode.BAD_REQUEST


def _deep_requests() -> list[m.Append | m.AppendBatch]:
    deep = orjson.loads(DEEP)
    return [
        m.Append("Q-A", deep, producer_id="P-1", producer_seq=0),
        m.AppendBatch("Q-A", [1, deep]),
        m.AppendBatch("Q-A", [1, deep], producer_id="P-1", producer_seq=0),
    ]


def test_each_command_of_a_deep_value_is_its_refusal(tmp_path):
    config = BrokerConfig(data_dir=str(tmp_path), port=0)
    deep = orjson.loads(DEEP)
    refusals: list[Any] = [plain_append(m.Append("Q-A", deep), config.max_data_bytes, 1)]
    refusals += [append_command(r, config, appended_ms=1) for r in _deep_requests()]
    refusals += [
        publish_command(m.Append("Q-A", deep, headers={"k": "v"}), config, appended_ms=1),
        publish_command(m.AppendBatch("Q-A", [1, deep], headers=[{}, {}]), config, appended_ms=1),
    ]
    for refusal in refusals:
        assert isinstance(refusal, ProtocolError) and refusal.code == ErrorCode.BAD_REQUEST


async def test_a_runs_deep_plain_append_is_refused_in_its_place(tmp_path):
    driver = StandInDriver()

    async def handle(request: Any, session: Any) -> Any:
        raise AssertionError("decided alone")

    runs = Runs(
        BrokerConfig(data_dir=str(tmp_path), port=0),
        driver,  # type: ignore[arg-type]
        handle=handle,
        closing=lambda: False,
        wall_clock_ms=lambda: 1,
    )
    requests = [m.Append("Q-A", 1), m.Append("Q-A", orjson.loads(DEEP)), m.Append("Q-A", 2)]
    answers: list[Any] = []
    await runs.handle_many(requests, None, answers.extend)
    assert isinstance(answers[0], RunAnswer) and isinstance(answers[2], RunAnswer)
    assert isinstance(answers[1].now, ProtocolError)
    assert [c.data for c in driver.commands if isinstance(c, cmd.AppendMessage)] == [b"1", b"2"]


def _frame(obj: dict[str, Any], deep: bytes) -> bytes:
    """The frame of ``obj`` with its string ``"DEEP"`` replaced by ``deep`` (orjson will not
    write such a value)."""
    return frame(orjson.dumps(obj).replace(b'"DEEP"', deep))


async def test_deep_values_are_refused_and_the_receive_answered_in_order(broker):
    q = await create_queue(broker.port)
    ok = {"operation": "APPEND", "queue_name": q}
    bad = [
        {**ok, "data": "DEEP"},
        {"operation": "APPEND_BATCH", "queue_name": q, "values": [1, "DEEP"]},
        {**ok, "data": "DEEP", "producer_id": "P-1", "producer_seq": 0},
        {"operation": "APPEND_BATCH", "queue_name": q, "values": ["DEEP"], "producer_id": "P-2"}
        | {"producer_seq": 0},
        {**ok, "data": "DEEP", "headers": {"k": "v"}},
        {"operation": "APPEND_BATCH", "queue_name": q, "values": ["DEEP"], "headers": [{}]},
    ]
    connection = await RawConnection.open(broker.port)
    try:
        for one in bad:  # alone, then pipelined between two appends
            await connection.send_raw(_frame(one, DEEP))
            answer = await connection.receive()
            assert answer is not None and answer["code"] == "BAD_REQUEST", one
            one_two = [{**ok, "data": 1}, one, {**ok, "data": 2}]
            await connection.send_raw(b"".join(_frame(obj, DEEP) for obj in one_two))
            answers = [await connection.receive() for _ in range(3)]
            assert [a and a.get("code") for a in answers] == [None, "BAD_REQUEST", None]
            assert answers[2]["sequence_num"] == answers[0]["sequence_num"] + 1  # type: ignore[index]
        read = {"operation": "READ", "queue_name": q, "client_id": "C-1", "max_messages": 100}
        messages = (await connection.call(read))["messages"]
        assert [message["data"] for message in messages] == [1, 2] * len(bad)
    finally:
        await connection.aclose()


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def test_a_clients_value_is_taken_to_max_value_depth_and_refused_past_it():
    limit = _codec.MAX_VALUE_DEPTH
    at, past = orjson.loads(_nested(limit)), orjson.loads(_nested(limit + 1))
    assert _codec.client_value(at) == _nested(limit)
    assert _codec.client_values([1, at]) == (b"1", _nested(limit))
    assert _codec.client_value("[" * 1000) == b'"' + b"[" * 1000 + b'"'  # (brackets in a string)
    for refused in (lambda: _codec.client_value(past), lambda: _codec.client_values([1, past])):
        with pytest.raises(ProtocolError) as caught:
            refused()
        assert caught.value.code == ErrorCode.BAD_REQUEST
    assert dumps_value(past) == _nested(limit + 1)  # (the log's own rule: orjson's limit)


async def test_values_at_the_limit_replicate_and_deeper_ones_never_reach_the_log(tmp_path):
    """Before: a value orjson writes alone but not inside a REPLICATE (252 to 254 levels) was
    stored by the leader and refused by every replica, so its entry never committed and every
    write of the group after it waited behind it. Now such a value is refused at the door,
    and values at the limit replicate in each form (a group in runs, a batch, a producer's)."""
    import trio

    from trio_broker.testing import open_local_cluster

    limit = _codec.MAX_VALUE_DEPTH
    async with open_local_cluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        q = await create_queue(leader.port)
        ok = {"operation": "APPEND", "queue_name": q, "data": "DEEP"}
        batch = {"operation": "APPEND_BATCH", "queue_name": q, "values": [1, "DEEP"]}
        producer = {**ok, "producer_id": "P-1", "producer_seq": 0}
        sent = [(ok, limit), (ok, limit), (batch, limit), (producer, limit)]
        sent += [(ok, limit + 1), (ok, 253), (batch, 252), (ok, limit)]
        connection = await RawConnection.open(leader.port)
        try:
            await connection.send_raw(b"".join(_frame(o, _nested(d)) for o, d in sent))
            with trio.fail_after(60):  # (a guard against the hang this test is about)
                answers = [await connection.receive() for _ in sent]
                assert [a and a.get("code") for a in answers] == [None] * 4 + [
                    "BAD_REQUEST"
                ] * 3 + [None]
                after = await connection.call({"operation": "APPEND", "queue_name": q, "data": 2})
                assert after["status"] == "success"
                while len({b.driver.applied_index for b in c.brokers.values()}) != 1:  # noqa: ASYNC110 (polling the brokers, bounded)
                    await trio.sleep(0.01)
            read = {"operation": "READ", "queue_name": q, "client_id": "C-1", "max_messages": 9}
            messages = (await connection.call(read))["messages"]
        finally:
            await connection.aclose()
    deep = orjson.loads(_nested(limit))
    assert [m["data"] for m in messages] == [deep, deep, 1, deep, deep, deep, 2]
