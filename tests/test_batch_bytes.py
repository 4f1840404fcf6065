"""A plain APPEND_BATCH, alone or in a COMMAND_GROUP of them, written by hand
(``_group_bytes._batch_bytes`` and ``_batches_group_bytes``: what a leader's log and every
REPLICATE carry under batch appends) is byte for byte what orjson writes for the general form,
without going through it, decodes back to the same payload, and any other payload is left to
the general form (with its errors)."""

from __future__ import annotations

import random

import orjson
import pytest

from tests.general_form import assert_encoded_as_general, general_bytes
from tests.test_replica_codec import QUEUES, STAMPS
from tests.test_replica_codec import VALUES as REPLICA_VALUES
from trio_broker._core import _commands as cmd
from trio_broker._protocol import _entries
from trio_broker._protocol._codec import dumps_value
from trio_broker._protocol._entries import decode_payload, encode_payload
from trio_broker._protocol._group_bytes import _batch_bytes, _batches_group_bytes

VALUES = [*REPLICA_VALUES, "a, b"]  # (a comma inside a value: the join must not split it)


def _batch(rng: random.Random, queues: list[str]) -> cmd.AppendBatch:
    values = tuple(dumps_value(rng.choice(VALUES)) for _ in range(rng.randint(1, 120)))
    return cmd.AppendBatch(rng.choice(queues), values, None, None, rng.choice(STAMPS))


@pytest.fixture
def no_general_form(monkeypatch):
    """The general encoder made to fail: what is encoded meanwhile was written by hand."""

    def refuse(payload):
        raise AssertionError(f"the general form was asked for {payload!r}")

    monkeypatch.setattr(_entries, "payload_to_obj", refuse)


@pytest.mark.parametrize("seed", range(60))
def test_plain_batches_are_written_by_hand_as_orjson_writes_them(seed, no_general_form):
    rng = random.Random(seed)
    queues = rng.sample(QUEUES, rng.randint(1, 3))
    group = cmd.CommandGroup(tuple(_batch(rng, queues) for _ in range(rng.randint(1, 25))))
    one = group.commands[0]
    written, alone = encode_payload(group), encode_payload(one)  # (by hand: see the fixture)
    assert written == _batches_group_bytes(group.commands)
    assert alone == _batch_bytes(one)
    assert decode_payload(written) == group
    assert decode_payload(alone) == one


@pytest.mark.parametrize("seed", range(20))
def test_the_hand_written_bytes_are_the_general_forms(seed):
    rng = random.Random(seed)
    group = cmd.CommandGroup(tuple(_batch(rng, QUEUES) for _ in range(rng.randint(1, 25))))
    assert _batches_group_bytes(group.commands) == general_bytes(group)
    for batch in group.commands:
        assert _batch_bytes(batch) == orjson.dumps(_entries.payload_to_obj(batch))


@pytest.mark.parametrize(
    "command",
    [
        cmd.AppendBatch("Q-1", (b'"a"', b'"b"'), "P-1", 3, 5),  # a producer's batch
        cmd.AppendBatch("Q-1", (b'"a"',), None, 4, 5),  # a sequence number alone
        cmd.AppendBatch("Q-1", (b'"a"', b'"b"'), None, None, None),  # no stamp
        cmd.AppendBatch("Q-1", (b'"a"',), None, None, True),  # `true` (refused when read)
        cmd.AppendBatch("Q-1", ('"a"',), None, None, 5),  # a value that is not bytes
        cmd.AppendBatch("Q-1", [b'"a"'], None, None, 5),  # values not in a tuple
        cmd.AppendMessage("Q-1", b'"v"', None, None, 5),
        cmd.ReadNext("C-1", "Q-1"),
    ],
    ids=["producer", "seq", "no-stamp", "bool-stamp", "str-value", "list", "append", "read"],
)
def test_any_other_payload_is_written_by_the_general_form(command):
    group = cmd.CommandGroup((cmd.AppendBatch("Q-1", (b'"v"',), None, None, 5), command))
    assert _batches_group_bytes(group.commands) is None
    assert encode_payload(group) == general_bytes(group)
    if type(command) is cmd.AppendBatch:
        assert _batch_bytes(command) is None
        assert encode_payload(command) == orjson.dumps(_entries.payload_to_obj(command))


@pytest.mark.parametrize("stamp", [2**64, -(2**63) - 1])
def test_a_stamp_orjson_refuses_is_refused_as_before(stamp):
    batch = cmd.AppendBatch("Q-1", (b'"v"',), None, None, stamp)
    assert _batch_bytes(batch) is None
    assert assert_encoded_as_general(cmd.CommandGroup((batch,))) is None
    with pytest.raises(orjson.JSONEncodeError):
        encode_payload(batch)


class _Name(str):
    pass


@pytest.mark.parametrize("queue_id", [None, 7, b"Q-1", _Name("Q-1")], ids=repr)
def test_a_queue_id_that_is_not_a_str_goes_to_the_general_form(queue_id):
    batch = cmd.AppendBatch(queue_id, (b"1",), None, None, 5)
    assert _batch_bytes(batch) is None
    written = assert_encoded_as_general(cmd.CommandGroup((batch,)))
    if written is not None:
        orjson.loads(written)  # (valid JSON)


class _Bytes(bytes):
    pass


@pytest.mark.parametrize(
    "value",
    [bytearray(b'"v"'), memoryview(b'"v"'), _Bytes(b'"v"')],
    ids=["bytearray", "memoryview", "bytes-subclass"],
)
def test_a_value_orjson_refuses_to_embed_is_refused_as_before(value):
    """``b",".join`` takes any buffer, where the general form's ``orjson.Fragment`` takes
    only ``bytes`` itself (or ``str``): such a value is refused as the general form refuses it
    (a memoryview written by hand would also be longer than ``encoded_bound`` says)."""
    batch = cmd.AppendBatch("Q-1", (b'"a"', value), None, None, 5)
    assert _batch_bytes(batch) is None
    assert _batches_group_bytes((batch,)) is None
    assert assert_encoded_as_general(cmd.CommandGroup((batch,))) is None
    with pytest.raises(TypeError, match="Fragment"):
        encode_payload(batch)


def test_a_group_is_refused_with_the_general_forms_error():
    """The general form builds the group's whole object before orjson writes any of it, so
    a later batch's values that are no tuple are its error, not an earlier batch's queue id
    that orjson refuses to write: a queue id orjson refuses goes to the general form too."""
    group = cmd.CommandGroup(
        (
            cmd.AppendBatch("Q-\ud800", (b"1",), None, None, 5),  # (a lone surrogate)
            cmd.AppendBatch("Q-1", None, None, None, 5),  # (not iterable)
        )
    )
    with pytest.raises(TypeError) as general:
        general_bytes(group)
    with pytest.raises(TypeError) as written:
        encode_payload(group)
    assert str(written.value) == str(general.value)
