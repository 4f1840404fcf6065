"""Proposal batching: a CommandGroup entry applies exactly like its commands one by one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_broker._core import QueueState
from trio_broker._core._commands import (
    AppendBatch,
    AppendMessage,
    CommandGroup,
    CreateQueue,
    GroupApplied,
    ReadBatch,
    ReadNext,
    Seek,
    data_size,
)
from trio_broker._errors import ProtocolError
from trio_broker._protocol._entries import decode_payload, encode_payload

Q1, Q2 = "Q-AAAAA00001", "Q-AAAAA00002"

_single = st.one_of(
    st.builds(CreateQueue, st.sampled_from([Q1, Q2])),
    st.builds(AppendMessage, st.sampled_from([Q1, Q2]), st.sampled_from([b"1", b'"x"'])),
    st.builds(ReadNext, st.sampled_from(["C-1", "C-2"]), st.sampled_from([Q1, Q2])),
    st.builds(Seek, st.sampled_from(["C-1"]), st.sampled_from([Q1, Q2]), st.none()),
)


@given(st.lists(st.lists(_single, min_size=1, max_size=5), min_size=1, max_size=6))
def test_a_group_applies_like_its_commands_one_by_one(groups):
    grouped, single = QueueState(), QueueState()
    for commands in groups:
        result = grouped.apply(CommandGroup(tuple(commands)))
        assert result == GroupApplied(tuple(single.apply(c) for c in commands))
    assert grouped == single


def test_a_refused_command_in_a_group_changes_nothing_and_the_others_apply():
    state = QueueState()
    state.apply(CreateQueue(Q1))
    result = state.apply(
        CommandGroup((AppendMessage(Q1, b"1"), AppendMessage(Q2, b"2"), AppendMessage(Q1, b"3")))
    )
    assert [type(r).__name__ for r in result.results] == [
        "MessageAppended",
        "CommandRejected",
        "MessageAppended",
    ]
    assert result.results[1].code == "QUEUE_NOT_FOUND"
    assert state.messages == {Q1: [b"1", b"3"]}


def test_groups_hold_at_least_one_command_and_do_not_nest():
    with pytest.raises(ValueError):
        CommandGroup(())
    inner = CommandGroup((CreateQueue(Q1),))
    with pytest.raises(ValueError):
        CommandGroup((inner,))


def test_a_group_round_trips_through_the_log_codec():
    group = CommandGroup(
        (
            CreateQueue(Q1),
            AppendMessage(Q1, b'{"a":1}', "P-1", 3),
            AppendBatch(Q1, (b"1", b"2")),
            ReadBatch("C-1", Q1, 5, True, 100),
            ReadNext("C-2", Q1),
        )
    )
    assert decode_payload(encode_payload(group)) == group
    assert data_size(group) == 7 + 18 + 5 * 64


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type": "COMMAND_GROUP", "commands": []}',
        b'{"type": "COMMAND_GROUP", "commands": {}}',
        b'{"type": "COMMAND_GROUP"}',
        b'{"type": "COMMAND_GROUP", "commands": [{"type": "NOOP"}]}',
        b'{"type": "COMMAND_GROUP", "commands": [{"type": "COMMAND_GROUP", "commands":'
        b' [{"type": "CREATE_QUEUE", "queue_id": "Q-AAAAA00001"}]}]}',
    ],
)
def test_a_malformed_group_is_a_protocol_error(raw):
    with pytest.raises(ProtocolError):
        decode_payload(raw)
