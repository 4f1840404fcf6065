"""An APPEND_BATCH decoded from a log entry (a replica's REPLICATE, the log read back) keeps
each value as the bytes the leader stored (``dumps_value``'s), written back from the parsed
list in one ``dumps_values`` call instead of one ``orjson.dumps`` per value
(docs/performance-history.md, "Batch appends: every broker's µs per message"). A group's plain
batches (no producer, a stamp or none, a non-empty list of values) are read in
``_group_from_obj``'s loop, without cattrs' function (the tests below make it fail), into
what it gives; any other batch still goes through it, with its answer or its error
("A replica's per-append path (seventh round)")."""

from __future__ import annotations

import orjson
import pytest

from trio_broker._core import _commands as cmd
from trio_broker._protocol import _entries
from trio_broker._protocol._codec import dumps_value
from trio_broker._protocol._entries import encode_payload, payload_from_obj

VALUES = {
    "plain strings": ["x" * 100] * 100,
    "commas in values": ["a,b", {"k": 1, "l": [1, 2]}, [3, 4], "no comma", 5],
    "any JSON": [None, True, 1.5, -7, 'é\U0001f600\n"', {"nested": {"deep": [[]]}}, []],
    "one value": [{"a": 1, "b": 2}],
}


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
@pytest.mark.parametrize("grouped", [False, True])
def test_a_batch_decoded_keeps_each_value_as_stored(monkeypatch, values, grouped):
    stored = tuple(dumps_value(v) for v in values)
    batch = cmd.AppendBatch("q", stored, None, None, 7)
    payload = cmd.CommandGroup((batch, batch)) if grouped else batch
    calls: list[int] = []
    real = _entries.dumps_values

    def spied(parsed: list) -> tuple[bytes, ...]:
        calls.append(len(parsed))
        return real(parsed)

    monkeypatch.setattr(_entries, "dumps_values", spied)
    decoded = payload_from_obj(orjson.loads(encode_payload(payload)))
    batches = decoded.commands if grouped else (decoded,)
    assert [b.data for b in batches] == [stored] * len(batches)
    assert all(type(d) is bytes for b in batches for d in b.data)
    assert calls == [len(values)] * len(batches)


def _general_form_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """cattrs' generated function for APPEND_BATCH made to fail: a group's batch decodes
    only by ``_group_from_obj``'s own reading of it."""

    def fails(obj: object, cls: type) -> None:
        raise AssertionError("the general form was used")

    monkeypatch.setitem(_entries._structure, cmd.AppendBatch, fails)


@pytest.mark.parametrize("stamp", [None, 0, 7, 2**63 - 1, -(2**63)])
@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
def test_a_groups_plain_batches_are_read_in_its_loop(monkeypatch, values, stamp):
    stored = tuple(dumps_value(v) for v in values)
    batches = [cmd.AppendBatch(q, stored, None, None, stamp) for q in ("q", 'q"\\é', "q")]
    obj = orjson.loads(encode_payload(cmd.CommandGroup(tuple(batches))))
    want = payload_from_obj(obj)
    _general_form_fails(monkeypatch)
    got = payload_from_obj(orjson.loads(encode_payload(cmd.CommandGroup(tuple(batches)))))
    assert got == want == cmd.CommandGroup(tuple(batches))
    assert all(type(d) is bytes for b in got.commands for d in b.data)


BATCH = {"type": "APPEND_BATCH", "queue_id": "q", "data": ["v"], "appended_ms": 7}
OTHER_BATCHES = {
    "a producer": {**BATCH, "producer_id": "P-1", "producer_seq": 3},
    "a sequence number alone": {**BATCH, "producer_seq": 3},
    "a producer alone": {**BATCH, "producer_id": "P-1"},
    "a true stamp": {**BATCH, "appended_ms": True},
    "a float stamp": {**BATCH, "appended_ms": 7.0},
    "a string stamp": {**BATCH, "appended_ms": "7"},
    "no values": {**BATCH, "data": []},
    "values not a list": {**BATCH, "data": "v"},
    "no values key": {k: v for k, v in BATCH.items() if k != "data"},
    "a queue id not a string": {**BATCH, "queue_id": 5},
    "no queue id": {k: v for k, v in BATCH.items() if k != "queue_id"},
}


def _decoded(obj: object) -> object:
    try:
        return payload_from_obj(obj)
    except Exception as exc:  # (the error, as the reader words it)
        return (type(exc), str(exc))


@pytest.mark.parametrize("other", OTHER_BATCHES.values(), ids=OTHER_BATCHES.keys())
def test_any_other_batch_in_a_group_is_the_general_forms(monkeypatch, other):
    group = {"type": "COMMAND_GROUP", "commands": [BATCH, other]}
    alone = _decoded(other)
    want = _decoded(group)
    if isinstance(alone, cmd.AppendBatch):
        assert want == cmd.CommandGroup((payload_from_obj(BATCH), alone))
    else:
        assert type(want) is tuple  # (refused as the batch alone is)
    # Read by cattrs' function, never by the loop: with it failing, the group fails.
    _general_form_fails(monkeypatch)
    assert "the general form was used" in str(_decoded(group))
