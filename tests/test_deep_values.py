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
