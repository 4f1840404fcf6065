"""The leader's per-request shortcuts of docs/performance-history.md, "The leader's CPU per request
(third round)", each decide what the path before it decided:

- ``decode_request`` decodes the original contract's APPEND, as clients write it, without the
  general path's calls, and anything else that starts like one through the general path;
- ``Account.take`` takes what ``fits`` then ``charge`` took, and refuses what they refused;
- a run's answers, built in one list for a run without refusals, each stay at their request;
- the writer's tally, counted in runs of one key, is the count per key;
- a batch's values written in one call and cut at their commas are each value's bytes;
- the ledger's cuts bound a run of one queue by its name once, whatever object holds it.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.stand_in_driver import StandInDriver
from trio_broker._core import _commands as cmd
from trio_broker._core import _proposals
from trio_broker._core._proposals import Proposals
from trio_broker._errors import BrokerError, ErrorCode, ProtocolError
from trio_broker._protocol import _codec
from trio_broker._protocol import _messages as m
from trio_broker._protocol._codec import (
    decode_request,
    dumps_value,
    dumps_values,
    loads_object,
    request_from_dict,
)
from trio_broker._runtime._answer import Answer
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._limits import BufferBudget
from trio_broker._runtime._outbox import Outbox
from trio_broker._runtime._pending import PendingGroup
from trio_broker._runtime._runs import RunAnswer, Runs
from trio_broker._runtime._writer import AnswerWriter


def test_a_compact_append_is_decoded_without_the_general_path(monkeypatch):
    def general(*_args: Any) -> Any:
        raise AssertionError("the general path")

    monkeypatch.setattr(_codec, "loads_object", general)
    monkeypatch.setattr(_codec, "_checked", general)  # (loads_object's checks, alone)
    monkeypatch.setattr(_codec, "request_from_dict", general)
    for data in ("x" * 100, 0, None, [1, {"a": "b"}], {"data": ',"data":'}):
        frame = orjson.dumps({"operation": "APPEND", "queue_name": "Q-AAAAABBBBB", "data": data})
        assert decode_request(frame) == m.Append("Q-AAAAABBBBB", data)
    with pytest.raises(AssertionError, match="the general path"):  # (spaces: not compact)
        decode_request(b'{"operation":"APPEND", "queue_name":"Q-A","data":1}')


@pytest.mark.parametrize(
    "frame",
    [
        b'{"operation":"APPEND","queue_name":"Q-A","data":1}',
        b'{"operation":"APPEND", "queue_name":"Q-A","data":1}',  # spaces
        b'{"operation":"APPEND","queue_name":"Q-A","data":1,"client_id":"C"}',
        b'{"operation":"APPEND","queue_name":"Q-A","queue_name":"Q-B","data":1}',  # twice
        b'{"operation":"APPEND","queue_name":"Q-A","data":123456789012345678901234567890}',
        b'{"operation":"APPEND","queue_name":"Q-A","ttl":1}',  # no data
        b'{"operation":"APPEND","queue_name":7,"data":1}',
        b'{"operation":"APPEND","queue_name":"' + b"Q" * 129 + b'","data":1}',
        b'{"operation":"APPEND","data":1,"queue_name":"Q-A"}',
        b'{"operation":"APPEND","queue_name":"Q-A","data":' + b"[" * 300 + b"]" * 300 + b"}",
        b'{"operation":"APPEND","queue_name":"Q-A","data":',  # not JSON
        b'{"operation":"APPEND",',
    ],
)
def test_a_frame_that_starts_as_an_append_decodes_as_the_general_path(frame):
    try:
        expected: Any = request_from_dict(loads_object(frame))
    except ProtocolError as exc:
        expected = exc.message
    try:
        decoded: Any = decode_request(frame)
    except ProtocolError as exc:
        decoded = exc.message
    assert decoded == expected


def test_take_is_fits_then_charge():
    rng = random.Random(7)
    for _ in range(200):
        limit = rng.randrange(1, 400)
        one, two = BufferBudget(limit), BufferBudget(limit)
        accounts = [(one.account(), two.account()) for _ in range(3)]
        for _ in range(40):
            a, b = rng.choice(accounts)
            size = rng.randrange(0, 150)
            if rng.random() < 0.3:
                give = rng.randrange(0, a.held + 1)
                a.release(give)
                b.release(give)
                continue
            fits = b.fits(size)
            if fits:
                b.charge(size)
            assert a.take(size) is fits
            assert (a.held, one.used, one.peak) == (b.held, two.used, two.peak)


async def test_a_runs_answers_stay_at_their_requests(tmp_path):
    config = BrokerConfig(data_dir=str(tmp_path), port=0, max_frame=1256)  # 1,000 data bytes
    driver = StandInDriver()
    handled = Answer(now=BrokerError(ErrorCode.QUEUE_NOT_FOUND, "handled alone"))

    async def handle(request: Any, session: Any) -> Answer:
        return handled

    runs = Runs(
        config,
        driver,  # type: ignore[arg-type]
        handle=handle,
        closing=lambda: False,
        wall_clock_ms=lambda: 1,
    )
    plain = [m.Append("Q-A", i) for i in range(6)]
    requests = [
        plain[0],
        m.Append("Q-A", "x" * 2000),  # too large: refused between two appends of a run
        plain[1],
        m.Append("named", 1),  # decided alone: the run before it is proposed first
        plain[2],
        plain[3],
        m.Append("Q-A", "y" * 2000),  # refused after the last append of a run
        m.Append("named", 2),
        plain[4],
        plain[5],
    ]
    answers: list[Answer] = []
    await runs.handle_many(requests, None, answers.extend)
    assert len(answers) == len(requests)
    for group in driver.groups:
        for index in range(len(group.results)):
            group.set(index, cmd.MessageAppended(100 * len(group.results) + index))
    placed = [(type(a).__name__, a._index if isinstance(a, RunAnswer) else None) for a in answers]
    assert placed == [
        ("RunAnswer", 0),
        ("Answer", None),
        ("RunAnswer", 1),
        ("Answer", None),
        ("RunAnswer", 0),
        ("RunAnswer", 1),
        ("Answer", None),
        ("Answer", None),
        ("RunAnswer", 0),
        ("RunAnswer", 1),
    ]
    assert answers[3] is handled and answers[7] is handled
    for refused in (answers[1], answers[6]):
        assert isinstance(refused.now, BrokerError) and refused.now.code == ErrorCode.TOO_LARGE
    assert [len(group.results) for group in driver.groups] == [2, 2, 2]


class _IO:
    def send_now(self, data: bytes) -> int:
        return len(data)


def test_the_writers_tally_counts_each_key():
    tallies: list[dict[tuple[str, Any, float], int]] = []
    outbox = Outbox(BufferBudget(1 << 20).account())
    writer = AnswerWriter(
        _IO(),  # type: ignore[arg-type]
        outbox,
        observe=lambda tally, now: tallies.append(dict(tally)),
        plaintext_hint=None,
    )
    group = PendingGroup(3)
    for index in range(3):
        group.set(index, cmd.MessageAppended(index + 1))
    refused = Answer(now=BrokerError(ErrorCode.TOO_LARGE, "no"))
    invalid = Answer(now=ProtocolError("bad"))
    queued = [
        ("APPEND", 1.0, RunAnswer(group, 0)),
        ("APPEND", 1.0, RunAnswer(group, 1)),
        ("APPEND", 1.0, refused),
        ("APPEND", 1.0, RunAnswer(group, 2)),
        ("INVALID", 1.0, invalid),
        ("APPEND", 2.0, refused),
        ("APPEND", 1.0, refused),
    ]
    outbox.put_many([(op, started, 10) for op, started, _ in queued], [a for *_, a in queued])
    taken = writer._take()
    assert taken is not None
    frames, size, charged, count = taken
    assert len(frames) == count == len(queued) and charged == 10 * len(queued)
    assert size == sum(map(len, frames))
    assert tallies == [
        {
            ("APPEND", None, 1.0): 3,
            ("APPEND", ErrorCode.TOO_LARGE, 1.0): 2,
            ("INVALID", ErrorCode.BAD_REQUEST, 1.0): 1,
            ("APPEND", ErrorCode.TOO_LARGE, 2.0): 1,
        }
    ]
    assert not outbox.answers


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from(['"', ",", "\\", "a", "é", "\n", "😀", " "])),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", ",", '"']), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=500)
@given(st.lists(JSON, min_size=1, max_size=6))
def test_a_batchs_values_are_written_as_each_alone(values):
    assert dumps_values(values) == tuple(map(dumps_value, values))


def test_values_nested_as_deep_as_orjson_writes_alone_are_written_one_by_one():
    deep = orjson.loads(b"[" * 254 + b"]" * 254)  # (in a list: one level too deep for orjson)
    for values in ([deep], [deep, "a,b"], ["x" * 100] * 100, [1], [",", ","]):
        assert dumps_values(values) == tuple(map(dumps_value, values))


def test_the_ledger_bounds_a_run_of_one_queue_by_its_name_once(monkeypatch):
    """Each request's queue name is an object of its own (decoded from its frame): equal
    names are one run of the queue, its name's bound taken once, and the cuts are those of
    the same commands sharing one name object."""
    bounds: list[str] = []
    real = _proposals.text_bound

    def counted(text: str) -> int:
        bounds.append(text)
        return real(text)

    monkeypatch.setattr(_proposals, "text_bound", counted)
    names = [orjson.loads(b'"Q-AAAAABBBBB"') for _ in range(40)]
    assert len({id(name) for name in names}) == 40
    distinct = [cmd.AppendMessage(name, b"x" * 300) for name in names]
    shared = [cmd.AppendMessage(names[0], b"x" * 300) for _ in names]
    ledger: Proposals[Any] = Proposals(max_group=16, max_bytes=4000)
    cuts = list(ledger._cuts(distinct))
    assert len(bounds) == 1
    assert cuts == list(ledger._cuts(shared)) and len(cuts) > 3


def test_a_batch_whose_first_value_holds_a_comma_is_written_one_by_one_at_once(monkeypatch):
    """The list written whole first would be written again value by value (a comma inside a
    value): +45 to 50% a value on every broker for batches of objects."""
    from trio_broker._protocol import _codec

    written: list[Any] = []
    real = _codec.orjson.dumps

    class Counting:
        JSONEncodeError = _codec.orjson.JSONEncodeError

        @staticmethod
        def dumps(obj: Any) -> bytes:
            written.append(obj)
            return real(obj)

    monkeypatch.setattr(_codec, "orjson", Counting)
    objects = [{"id": n, "at": 1} for n in range(100)]
    assert dumps_values(objects) == tuple(real(o) for o in objects)
    assert len(written) == 100
    written.clear()
    assert dumps_values(["a"] * 100) == (b'"a"',) * 100
    assert len(written) == 1


def test_an_empty_list_of_values_is_written_as_none():
    """(A decoded APPEND_BATCH is checked for its count after its values are written.)"""
    from trio_broker._protocol._codec import client_values

    assert dumps_values([]) == () and client_values([]) == ()
