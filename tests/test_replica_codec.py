"""A COMMAND_GROUP of plain appends written by hand (``_group_bytes._appends_group_bytes``, what a
leader's log and every REPLICATE carry under load) is byte for byte what orjson writes for the
general form, decodes back to the same group, and any other group is left to the general form
(with its errors)."""

from __future__ import annotations

import random

import orjson
import pytest

from tests.general_form import assert_encoded_as_general, general_bytes
from trio_broker._core import _commands as cmd
from trio_broker._protocol._codec import dumps_value
from trio_broker._protocol._entries import (
    decode_payload,
    encode_payload,
)
from trio_broker._protocol._group_bytes import _appends_group_bytes

QUEUES = ["Q-0123456789abcdef", "Q-é", 'Q-"quoted"\\', "Q-\u2028\x01", "Q-🙂"]
VALUES = [
    "x" * 100,
    "",
    'quote " and \\ and \n',
    "é🙂\u2028",
    0,
    -1.5,
    True,
    None,
    [1, "two", {"three": 3}],
    {"k": {"nested": [None, False]}, "": ""},
    2**63 - 1,
]
STAMPS = [0, 1, 1_765_000_000_000, -(2**63), 2**63 - 1, 2**64 - 1]


def _random_group(rng: random.Random) -> cmd.CommandGroup:
    queues = rng.sample(QUEUES, rng.randint(1, 3))
    return cmd.CommandGroup(
        tuple(
            cmd.AppendMessage(
                rng.choice(queues), dumps_value(rng.choice(VALUES)), None, None, rng.choice(STAMPS)
            )
            for _ in range(rng.randint(1, 40))
        )
    )


@pytest.mark.parametrize("seed", range(100))
def test_plain_appends_are_written_by_hand_as_orjson_writes_them(seed):
    group = _random_group(random.Random(seed))
    written = _appends_group_bytes(group.commands)
    assert written is not None
    assert written == general_bytes(group)
    assert encode_payload(group) == written
    assert decode_payload(written) == group


@pytest.mark.parametrize(
    "command",
    [
        cmd.AppendMessage("Q-1", b'"v"', "P-1", 3, 5),  # a producer's append
        cmd.AppendMessage("Q-1", b'"v"', None, None, None),  # no stamp (an older leader's)
        cmd.AppendMessage("Q-1", b'"v"', None, None, True),  # `true` (refused when read)
        cmd.AppendBatch("Q-1", (b'"a"', b'"b"')),
        cmd.ReadNext("C-1", "Q-1"),
    ],
    ids=["producer", "no-stamp", "bool-stamp", "batch", "read"],
)
def test_any_other_group_is_written_by_the_general_form(command):
    group = cmd.CommandGroup((cmd.AppendMessage("Q-1", b'"v"', None, None, 5), command))
    assert _appends_group_bytes(group.commands) is None
    assert encode_payload(group) == general_bytes(group)
    if command.__class__ is not cmd.AppendMessage or command.appended_ms is not True:
        assert decode_payload(encode_payload(group)) == group


@pytest.mark.parametrize("stamp", [2**64, -(2**63) - 1])
def test_a_stamp_orjson_refuses_is_refused_as_before(stamp):
    group = cmd.CommandGroup((cmd.AppendMessage("Q-1", b'"v"', None, None, stamp),))
    assert _appends_group_bytes(group.commands) is None
    with pytest.raises(orjson.JSONEncodeError):
        general_bytes(group)
    with pytest.raises(orjson.JSONEncodeError):
        encode_payload(group)


class _Name(str):
    pass


@pytest.mark.parametrize("queue_id", [None, 7, b"Q-1", _Name("Q-1")], ids=repr)
@pytest.mark.parametrize("where", [0, 1, 2])
def test_a_queue_id_that_is_not_a_str_goes_to_the_general_form_wherever_it_is(queue_id, where):
    """First in the group too: the hand-written form starts with no queue (not ``None``, which
    a first append naming no queue matched, writing invalid JSON)."""
    commands = [cmd.AppendMessage("Q-1", b'"v"', None, None, 5) for _ in range(3)]
    commands[where] = cmd.AppendMessage(queue_id, b"1", None, None, 5)
    group = cmd.CommandGroup(tuple(commands))
    assert _appends_group_bytes(group.commands) is None
    written = assert_encoded_as_general(group)
    if written is not None:
        orjson.loads(written)  # (valid JSON)
