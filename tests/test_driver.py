"""The consensus driver's bookkeeping of proposals, in isolation from sockets and disks."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from trio_broker._core._commands import (
    Ack,
    AppendBatch,
    AppendMessage,
    CommandGroup,
    CreateQueue,
    ReadBatch,
    RetentionPolicy,
    SetRetention,
)
from trio_broker._core._raft import RaftNode
from trio_broker._core._raft_messages import Config, HardState, SnapshotMeta
from trio_broker._protocol._entries import encode_payload
from trio_broker._runtime import BrokerConfig
from trio_broker._runtime._driver import Pending, RaftDriver, _encoded_bound

CAPACITY = 4


def make_driver(tmp_path) -> RaftDriver:
    node = RaftNode(
        "B-AAAAA",
        hard_state=HardState(0, None, 0),
        snapshot=SnapshotMeta(0, 0, Config(voters=frozenset({"B-AAAAA"}))),
        rng=random.Random(1),
    )
    return RaftDriver(
        "B-AAAAA",
        "G-AAAAA",
        ("127.0.0.1", 1),
        BrokerConfig(data_dir=tmp_path, max_pending=CAPACITY),
        network=None,
        store=None,
        worker=None,
        node=node,
        addresses={},
        on_applied=lambda payload, result: None,
        on_snapshot=lambda queues, retained: None,
    )


async def test_a_waiter_replaced_by_a_later_leaders_entry_is_answered_not_applied(tmp_path):
    """An entry this broker proposed in an earlier term, at an index where its log now holds
    this term's entry, was never committed: its waiters are answered, their capacity freed."""
    driver = make_driver(tmp_path)
    stale = [Pending(), Pending()]
    for _ in stale:
        driver._capacity.acquire_nowait()
    driver._wait_for(9, 5, stale)
    fresh = Pending()
    driver._capacity.acquire_nowait()
    driver._wait_for(9, 7, [fresh])
    assert all(p.done and p.result.code == "NOT_LEADER" for p in stale)
    assert "not applied" in stale[0].result.message
    assert not fresh.done
    assert driver._waiters[9] == (7, [fresh])
    assert driver._capacity.value == CAPACITY - 1  # only the fresh proposal holds a unit


async def test_a_command_group_cannot_be_proposed_from_outside(tmp_path):
    driver = make_driver(tmp_path)
    answer = await driver.propose(CommandGroup((CreateQueue("Q-AAAAA00001"),)))
    assert answer.code == "BAD_REQUEST"
    assert driver._capacity.value == CAPACITY and driver.pending == 0


_ids = st.text(alphabet="ABCXYZ0123456789-", min_size=1, max_size=128)
_data = st.binary(max_size=64).map(lambda b: b'"' + b.hex().encode() + b'"')
_seqs = st.integers(0, 2**63)
_stamps = st.integers(0, 2**62)
_commands = st.one_of(
    st.builds(AppendMessage, _ids, _data, _ids | st.none(), _seqs, _stamps),
    st.builds(
        AppendBatch,
        _ids,
        st.lists(_data, min_size=1, max_size=5).map(tuple),
        _ids | st.none(),
        _seqs,
        _stamps,
    ),
    st.builds(ReadBatch, _ids, _ids, st.integers(1, 10**6), st.booleans(), st.integers(0, 2**40)),
    st.builds(Ack, _ids, _ids, st.integers(-(2**63), 2**63)),
    st.builds(
        SetRetention,
        _ids,
        st.builds(RetentionPolicy, st.integers(1, 10**12), st.integers(1, 10**12), st.booleans()),
    ),
)


@given(st.lists(_commands, min_size=1, max_size=20))
def test_the_group_size_bound_is_an_upper_bound_of_the_encoded_size(commands):
    """Groups stay under max_frame by this bound, so that the core's REPLICATE of 64 entries
    stays within a peer frame (80 x max_frame): the bound must never be below the truth."""
    for command in commands:
        assert _encoded_bound(command) >= len(encode_payload(command))
    group = CommandGroup(tuple(commands))
    assert sum(_encoded_bound(c) for c in commands) + 64 >= len(encode_payload(group))
