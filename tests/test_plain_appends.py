"""The original contract's APPEND from its frame to its command without an ``Append`` or a
value written again (docs/performance-history.md, "The leader's request path without an object per
APPEND"):

- ``decode_client_request`` decodes every frame as ``decode_request`` does, but hands a
  compact APPEND on as a ``PlainAppend`` whose value's bytes are ``dumps_value``'s, byte for
  byte, and refuses what ``decode_request`` refuses, with its message;
- ``Runs`` makes of a receive of such frames the commands, the log entry's bytes and the
  refusals (a value nested too deep, one too large, a queue by name, a broker closing) that
  the requests ``decode_request`` decodes give it;
- a receive of compact APPENDs reaches its commands with no ``Append`` built and no value
  written by ``client_value`` or ``dumps_value``, alone and in a run.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from tests.stand_in_driver import StandInDriver
from trio_broker._core import _commands as cmd
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._protocol import _codec
from trio_broker._protocol import _messages as m
from trio_broker._protocol._codec import (
    as_request,
    decode_client_request,
    decode_request,
    dumps_value,
)
from trio_broker._protocol._entries import encode_payload
from trio_broker._runtime import _operations, _runs
from trio_broker._runtime._answer import Answer
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._group_routing import named_group
from trio_broker._runtime._runs import Runs

QUEUE = "Q-AAAAABBBBB"


def _random_text(rng: random.Random) -> str:
    alphabet = 'ab ,"\\:{}[]\u00e9\u2603\n\t/' + "\u0001"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return _random_text(rng)
    if kind == 1:
        return rng.choice([0, -1, 7, 2**63 - 1, -(2**63), 2**64 - 1])
    if kind == 2:
        return rng.choice([0.5, -1e300, 1.0, 3.14159])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return "x" * rng.choice([0, 100, 2000])
    if kind == 5:
        return rng.choice(["", "data", ',"data":', '","data":1}', "Q-AAAAABBBBB"])
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    if kind == 7:
        return {_random_text(rng): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return {"data": _random_value(rng, depth + 1), "queue_name": "Q-X"}


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def _value_text(rng: random.Random) -> bytes:
    """A value's JSON as a client may write it: as orjson writes it most often, else spaced,
    escaped differently, nested deep, with a long integer or a duplicate key."""
    kind = rng.randrange(12)
    if kind == 0:
        return _nested(rng.choice([150, 199, 200, 201, 250, 253, 254, 300]))
    if kind == 1:
        return rng.choice([b'"\\u0041\\/"', b"[1, 2]", b'{"a":1,"a":2}', b"123456789012345678901"])
    if kind == 2:
        return rng.choice([b'{"a":[{"b":1,"b":1}]}', b"-9223372036854775809", b"1e400", b"nul"])
    if kind == 3:
        return b"{" * 201 + b"}" * 201  # (not JSON: an object needs a key)
    if kind == 4:
        inner = b'{"k":' * rng.choice([100, 199, 200, 201, 230]) + b"1"
        return inner + b"}" * inner.count(b"{")
    return orjson.dumps(_random_value(rng))


def _queue_text(rng: random.Random) -> bytes:
    kind = rng.randrange(10)
    if kind == 0:
        return orjson.dumps(rng.choice(["orders", 'Q-"x', "Q-\\", "Q-\u00e9\u00e9,", "Q-é", ""]))
    if kind == 1:
        return orjson.dumps("Q-" + "A" * rng.choice([126, 127, 128]))
    if kind == 2:
        return rng.choice([b"7", b"null", b'"Q-\\u0041"', b'["Q-A"]'])
    return orjson.dumps(QUEUE)


def _random_frame(rng: random.Random) -> bytes:
    """A frame that starts like an APPEND, or nearly, in every order and shape."""
    fields = [
        (b'"operation"', b'"APPEND"'),
        (b'"queue_name"', _queue_text(rng)),
        (b'"data"', _value_text(rng)),
    ]
    shape = rng.randrange(10)
    if shape == 0:
        rng.shuffle(fields)
    elif shape == 1:
        fields.append((b'"client_id"', b'"C-1"'))
    elif shape == 2:
        fields.append(rng.choice(fields))  # a key twice
    elif shape == 3:
        del fields[2]
    elif shape == 4:
        fields.append((b'"producer_id"', b'"P-1"'))
    elif shape == 5:
        fields[1], fields[2] = fields[2], fields[1]
    colon, comma = (b": ", b", ") if rng.random() < 0.1 else (b":", b",")
    text = b"{" + comma.join(key + colon + value for key, value in fields) + b"}"
    if rng.random() < 0.02:
        text = text[: rng.randrange(len(text))]
    return text


FRAMES = [_random_frame(random.Random(seed)) for seed in range(4000)]


def _outcome(decode: Any, payload: bytes) -> Any:
    try:
        return decode(payload)
    except Exception as exc:
        return (type(exc), str(exc))


def test_a_client_frame_decodes_as_decode_request_decodes_it():
    plain = 0
    for payload in FRAMES:
        old, new = _outcome(decode_request, payload), _outcome(decode_client_request, payload)
        if type(new) is tuple and type(new[0]) is str:  # a PlainAppend
            plain += 1
            queue, data, value = new
            assert old == m.Append(queue, value), payload
            assert type(data) is bytes and data == dumps_value(old.data), payload
            assert as_request(new) == old
        else:
            assert new == old, payload
    assert plain > 500  # (a fifth of the frames above are compact APPENDs)


def _make_runs(
    driver: StandInDriver, closing: bool = False, alone: list[Any] | None = None
) -> Runs:
    async def handle(request: Any, session: Any) -> Answer:
        assert type(request) is not tuple
        if alone is not None:
            alone.append(request)
        return Answer(now=m.Done())

    config = BrokerConfig(data_dir=".", port=0, max_frame=1256)  # (values up to 1,000 bytes)
    return Runs(
        config,
        driver,  # type: ignore[arg-type]
        handle=handle,
        closing=lambda: closing,
        wall_clock_ms=lambda: 1_700_000_000_000,
    )


def _answers(answers: list[Any]) -> list[Any]:
    """What each answer is: its refusal's code and message, decided alone, or proposed."""
    shown: list[Any] = []
    for answer in answers:
        now = answer.now
        if isinstance(now, BrokerError):
            shown.append((now.code, now.message))
        else:
            shown.append("alone" if now is not None else "proposed")
    return shown


async def _decided(requests: list[Any], closing: bool, max_group: int = 1024) -> tuple[Any, ...]:
    driver = StandInDriver(max_group)
    answers: list[Any] = []
    alone: list[Any] = []
    runs = _make_runs(driver, closing, alone)
    if len(requests) == 1:
        answers.append(await runs._handle_one(requests[0], None))
    else:
        await runs.handle_many(requests, None, answers.extend)
    commands = driver.commands
    logged = b""
    if commands:
        logged = encode_payload(cmd.CommandGroup(tuple(commands)))
        logged += encode_payload(cmd.CommandGroup(tuple(commands)), runs=True)
        logged += b"".join(encode_payload(command) for command in commands)
    return commands, _answers(answers), logged, alone, [len(run) for run in driver.runs]


async def test_runs_make_the_same_commands_log_bytes_and_refusals():
    rng = random.Random(7)
    decodable = []
    for payload in FRAMES:
        if not isinstance(_outcome(decode_request, payload), tuple):
            decodable.append(payload)
    extra = [
        orjson.dumps({"operation": "APPEND", "queue_name": QUEUE, "data": "x" * 1200}),
        orjson.dumps({"operation": "APPEND", "queue_name": "orders", "data": 1}),
        b'{"operation":"APPEND","queue_name":"Q-A","data":' + _nested(201) + b"}",
        b'{"operation":"APPEND","queue_name":"Q-A","data":' + _nested(200) + b"}",
    ]
    receives = [[payload] for payload in extra + decodable[:300]]
    for _ in range(300):
        receives.append(rng.sample(decodable + extra, rng.randrange(2, 20)))
    seen: set[str] = set()
    for receive in receives:
        for closing in (False, True):
            old = await _decided([decode_request(p) for p in receive], closing)
            new = await _decided([decode_client_request(p) for p in receive], closing)
            assert new == old, receive
            seen.update(a if type(a) is str else a[0] for a in new[1])
    kinds = {"proposed", "alone", ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE}
    assert kinds <= seen  # (each kind of answer was compared)


async def test_a_receive_of_compact_appends_only_is_one_run_as_before():
    rng = random.Random(11)
    values = ["x" * 100, 1, {"a": "é"}, "y" * 390, "z" * 999, "w" * 1001, _nested(201).decode()]
    for _ in range(200):
        count = rng.randrange(2, 20)
        receive = [
            orjson.dumps(
                {
                    "operation": "APPEND",
                    "queue_name": rng.choice([QUEUE, QUEUE, QUEUE, "orders"]),
                    "data": rng.choice(values),
                }
            )
            for _ in range(count)
        ]
        for closing in (False, True):
            for max_group in (8, 1024):
                old = await _decided([decode_request(p) for p in receive], closing, max_group)
                new = await _decided(
                    [decode_client_request(p) for p in receive], closing, max_group
                )
                assert new == old, receive


async def test_compact_appends_reach_their_commands_without_an_append_or_a_dumps(monkeypatch):
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("built or written again")

    frames = [
        orjson.dumps({"operation": "APPEND", "queue_name": QUEUE, "data": value})
        for value in ["x" * 100, {"a": [1, 2.5, None]}, 12, 'é,"data":', _nested(300).decode()]
    ]
    requests = [decode_client_request(payload) for payload in frames]
    monkeypatch.setattr(_runs, "client_value", refused)
    monkeypatch.setattr(_operations, "client_value", refused)
    monkeypatch.setattr(_codec, "dumps_value", refused)
    monkeypatch.setattr(_codec, "client_value", refused)
    monkeypatch.setattr(m.Append, "__init__", refused)
    requests += [decode_client_request(payload) for payload in frames]
    driver = StandInDriver()
    answers: list[Any] = []
    await _make_runs(driver).handle_many(requests, None, answers.extend)
    alone = await _make_runs(driver)._handle_one(requests[0], None)
    assert alone.now is None
    expected = [orjson.dumps(orjson.loads(payload)["data"]) for payload in frames]
    assert [c.data for c in driver.commands] == expected * 2 + [expected[0]]
    assert all(c.queue_id == QUEUE for c in driver.commands)


def test_the_groups_route_a_plain_append_by_its_queue():
    queue = "Q-" + "A" * 10 + "B" * 10
    frame = {"operation": "APPEND", "queue_name": queue, "data": 1}
    plain = decode_client_request(orjson.dumps(frame))
    assert type(plain) is tuple
    assert named_group(plain) == named_group(m.Append(queue, None))


@pytest.mark.parametrize("queue", ["Q-A", 'Q-"', "Q-é", "Q-éé,"])
def test_a_queue_written_with_escapes_or_not_ascii_is_never_sliced_wrong(queue):
    payload = orjson.dumps({"operation": "APPEND", "queue_name": queue, "data": ',"data":1'})
    new = decode_client_request(payload)
    assert as_request(new) == m.Append(queue, ',"data":1')
    assert type(new) is tuple or queue != "Q-A"
    if type(new) is tuple:
        assert new[1] == orjson.dumps(',"data":1')


class _LoadsOnly:
    """orjson for the codec, but writing nothing back (``dumps`` refused)."""

    loads = staticmethod(orjson.loads)
    JSONDecodeError = orjson.JSONDecodeError
    JSONEncodeError = orjson.JSONEncodeError

    @staticmethod
    def dumps(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the frame was written back")


@pytest.mark.parametrize("value", ["x" * 100, "", "Q-\x7f ~!#$%&'()*+,-./09:;<=>?@[]^_`{|}"])
def test_a_compact_append_of_a_plain_string_is_not_written_back(monkeypatch, value):
    """A string value (ASCII, nothing escaped) in a frame as short as its object can be
    written: no write of the object back to prove it compact (the "leader's request path
    (seventh round)"), and the same PlainAppend as the check gives."""
    payload = orjson.dumps({"operation": "APPEND", "queue_name": QUEUE, "data": value})
    expected = decode_client_request(payload)
    monkeypatch.setattr(_codec, "orjson", _LoadsOnly)
    assert decode_client_request(payload) == expected == (QUEUE, orjson.dumps(value), value)


@pytest.mark.parametrize(
    "data",
    [
        b'"a\\/b"',  # (one character escaped: the frame is longer than its object's writing)
        b'"\\u0041"',
        b'"\\n"',
        b'"\xc3\xa9"',  # (not ASCII: more bytes than characters)
        b'"a\tb"',  # (a control character unescaped: not JSON, refused as before)
        b'"\xff"',
        b'"a" ',
        b' "a"',
        b'"a","data":"b"',  # (a key twice: the last one kept)
        b'"a","operation":"APPEND"',
    ],
)
def test_a_string_value_written_otherwise_decodes_as_decode_request_decodes_it(data):
    payload = b'{"operation":"APPEND","queue_name":"Q-A","data":' + data + b"}"
    old, new = _outcome(decode_request, payload), _outcome(decode_client_request, payload)
    if type(new) is tuple and type(new[0]) is str:
        assert old == m.Append(new[0], new[2]) and new[1] == dumps_value(old.data)
    else:
        assert new == old
