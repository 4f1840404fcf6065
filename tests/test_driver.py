"""The consensus driver's bookkeeping of proposals, in isolation from sockets and disks."""

from __future__ import annotations

import random
from typing import Any

import trio
import trio.testing
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
from trio_broker._core._proposals import encoded_bound as _encoded_bound
from trio_broker._core._raft import RaftNode
from trio_broker._core._raft_messages import Config, HardState, Heartbeat, SnapshotMeta
from trio_broker._protocol._entries import encode_payload
from trio_broker._runtime import BrokerConfig
from trio_broker._runtime._driver import Pending, RaftDriver
from trio_broker.testing._sim_cluster import Cluster

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
    assert driver._ledger.waiting(9) == (7, [fresh])
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


class _Fleet:
    """Stands in for the peer links: records what the driver sends, and when."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, Any]] = []

    def send(self, message: Any) -> None:
        self.sent.append((trio.current_time(), message))

    def ensure(self, peers: Any) -> None:
        pass


class _StuckWorker:
    """A storage thread whose every job waits for ``release`` (an fsync that hangs)."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.started = 0

    async def run(self, fn: Any, *args: Any) -> Any:
        self.started += 1
        await self.release.wait()
        return fn(*args)


class _Store:
    def save(self, *, committed: Any = (), **_: Any) -> list[None]:
        return [None for _ in committed]


async def test_heartbeats_leave_on_time_while_a_transaction_is_stuck(tmp_path, autojump_clock):
    """Issue 3's closing note: heartbeats left only between storage transactions, so a slow
    fsync on the leader let its followers time out. The driver's clock sends them on its own
    timer while a Ready's transaction is still running."""
    ids = ("B-AAAAA", "B-BBBBB", "B-CCCCC")
    node = Cluster(ids).elect("B-AAAAA")
    worker, fleet = _StuckWorker(), _Fleet()
    config = BrokerConfig(data_dir=tmp_path, heartbeat_interval=0.2, failure_timeout=1.5)
    driver = RaftDriver(
        ids[0],
        "G-AAAAA",
        ("127.0.0.1", 1),
        config,
        network=None,
        store=_Store(),
        worker=worker,
        node=node,
        addresses={},
        on_applied=lambda payload, result: None,
        on_snapshot=lambda queues, retained: None,
    )
    driver.peers = fleet
    async with trio.open_nursery() as nursery:
        driver._nursery = nursery
        nursery.start_soon(driver._drive)
        pending = await driver.propose(CreateQueue("Q-AAAAA00001"))
        await trio.testing.wait_all_tasks_blocked()
        assert worker.started == 1  # the proposal's transaction, stuck
        stuck_at = trio.current_time()
        await trio.sleep(0.65)
        beats = [m for t, m in fleet.sent if t > stuck_at and isinstance(m, Heartbeat)]
        assert worker.started == 1 and not pending.done
        # one heartbeat every heartbeat_interval (2 ticks of the core) to each follower
        assert {m.dst for m in beats} == {"B-BBBBB", "B-CCCCC"}
        assert len(beats) >= 2 * 3
        worker.release.set()
        nursery.cancel_scope.cancel()
