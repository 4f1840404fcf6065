"""A group of plain APPEND_BATCHes written in one join (``_group_bytes._batches_group_bytes``,
the leader's encoding of every entry under batch appends) against the code it replaced (each
batch written whole, then the group joined and closed): the same bytes, or the same None,
for random groups with members of every kind the hand-written form refuses at any place;
and the entry's bytes kept as written, not copied once more (``_entries.payload_bytes``)."""

from __future__ import annotations

import random
from operator import countOf
from typing import Any

import orjson
import pytest

from tests.test_replica_codec import QUEUES, STAMPS
from tests.test_replica_codec import VALUES as REPLICA_VALUES
from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol import _entries
from trio_broker._protocol._codec import dumps_value
from trio_broker._protocol._entries import payload_bytes
from trio_broker._protocol._group_bytes import _batches_group_bytes

_LOW, _HIGH = -(2**63), 2**64


def before(commands: tuple[Any, ...]) -> bytes | None:
    """``_batches_group_bytes`` as it was (a copy kept here: the one join must give exactly
    its bytes, and refuse exactly what it refused)."""
    parts = []
    for c in commands:
        if type(c) is not cmd.AppendBatch or c.producer_id is not None:
            return None
        data, stamp, queue = c.data, c.appended_ms, c.queue_id
        if (
            c.producer_seq is not None
            or type(stamp) is not int
            or not _LOW <= stamp < _HIGH
            or type(queue) is not str
            or type(data) is not tuple
            or countOf(map(type, data), bytes) != len(data)
        ):
            return None
        values = b",".join(data)
        try:
            queue_text = orjson.dumps(queue)
        except TypeError:
            return None
        head = b'{"type":"APPEND_BATCH","queue_id":' + queue_text + b',"data":'
        parts.append(b'%b[%b],"appended_ms":%d}' % (head, values, stamp))
    if not parts:
        return None
    return b'{"type":"COMMAND_GROUP","commands":[' + b",".join(parts) + b"]}"


VALUES = [*REPLICA_VALUES, "a, b"]
ODD = [
    cmd.AppendBatch("Q-1", (b'"a"',), "P-1", 3, 5),  # a producer's batch
    cmd.AppendBatch("Q-1", (b'"a"',), None, 4, 5),  # a sequence number alone
    cmd.AppendBatch("Q-1", (b'"a"',), None, None, None),  # no stamp
    cmd.AppendBatch("Q-1", (b'"a"',), None, None, True),  # a bool stamp
    cmd.AppendBatch("Q-1", (b'"a"',), None, None, 2**64),  # a stamp orjson refuses
    cmd.AppendBatch("Q-1", (b'"a"',), None, None, -(2**63) - 1),
    cmd.AppendBatch("Q-1", ('"a"',), None, None, 5),  # a value that is not bytes
    cmd.AppendBatch("Q-1", (bytearray(b'"a"'),), None, None, 5),  # another buffer
    cmd.AppendBatch("Q-1", (memoryview(b'"a"'),), None, None, 5),
    cmd.AppendBatch("Q-1", [b'"a"'], None, None, 5),  # values not in a tuple
    cmd.AppendBatch(7, (b'"a"',), None, None, 5),  # a queue id that is not a str
    cmd.AppendBatch("Q-\ud800", (b'"a"',), None, None, 5),  # one orjson refuses
    cmd.AppendMessage("Q-1", b'"v"', None, None, 5),
    cmd.ReadNext("C-1", "Q-1"),
]


def _group(rng: random.Random, odd: bool) -> tuple[Any, ...]:
    queues = rng.sample(QUEUES, rng.randint(1, 3))
    commands: list[Any] = [
        cmd.AppendBatch(
            rng.choice(queues),
            tuple(dumps_value(rng.choice(VALUES)) for _ in range(rng.randint(0, 40))),
            None,
            None,
            rng.choice(STAMPS),
        )
        for _ in range(rng.randint(0, 12))
    ]
    if odd:
        commands.insert(rng.randint(0, len(commands)), rng.choice(ODD))
    return tuple(commands)


@pytest.mark.parametrize("seed", range(150))
def test_one_join_writes_the_bytes_before_or_refuses_as_before(seed):
    rng = random.Random(seed)
    commands = _group(rng, odd=seed % 3 == 0)
    assert _batches_group_bytes(commands) == before(commands)


@pytest.mark.parametrize("odd", ODD)
def test_each_refused_member_is_refused_alone_and_in_a_group(odd):
    plain = cmd.AppendBatch("Q-1", (b'"v"',), None, None, 5)
    for commands in ((odd,), (plain, odd), (odd, plain), (plain, odd, plain)):
        assert _batches_group_bytes(commands) is None
        assert before(commands) is None


def test_the_entry_keeps_the_bytes_as_written(monkeypatch):
    """The group's bytes are the entry's, not a copy of them (the copy is for orjson's
    results, which keep a larger buffer); the general form's are still copied."""
    written = b'{"type":"COMMAND_GROUP","commands":[]}'
    monkeypatch.setattr(_entries, "_batches_group_bytes", lambda commands: written)
    group = cmd.CommandGroup((cmd.AppendBatch("Q-1", (b'"v"',), None, None, 5),))
    assert payload_bytes(rm.Entry(1, 2, group)) is written
    general = rm.Entry(1, 3, cmd.CreateQueue("Q-2"))
    assert payload_bytes(general) == orjson.dumps(_entries.payload_to_obj(general.payload))
