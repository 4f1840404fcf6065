"""The consensus driver's bookkeeping of proposals, in isolation from sockets and disks."""

from __future__ import annotations

import random
import time
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
from trio_broker._core._raft_messages import (
    Config,
    HardState,
    Heartbeat,
    SnapshotMeta,
)
from trio_broker._protocol._entries import encode_payload
from trio_broker._runtime import BrokerConfig
from trio_broker._runtime._driver import RaftDriver
from trio_broker._runtime._pending import Pending
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


# -- where a Ready's transaction runs ---------------------------------------------------------


class _RecordingWorker:
    """Runs every job at once and records whether it was handed to the storage thread."""

    def __init__(self) -> None:
        self.where: list[str] = []

    async def run(self, fn: Any, *args: Any) -> Any:
        self.where.append("thread")
        await trio.lowlevel.checkpoint()
        return fn(*args)

    async def run_short(self, fn: Any, *args: Any) -> Any:
        self.where.append("here")
        return fn(*args)


class _SlowStore(_Store):
    """A store whose transactions take ``seconds`` of real time (an fsync that drags) and
    that notes each one in ``log``."""

    def __init__(self, seconds: float = 0.0, log: list[Any] | None = None) -> None:
        self.seconds = seconds
        self.log = log if log is not None else []

    def save(self, **kwargs: Any) -> list[None]:
        time.sleep(self.seconds)
        self.log.append("saved")
        return super().save(**kwargs)


class _LinkedFleet:
    """Peer links as the runtime has them: ``send`` hands a message to its peer's link task,
    which writes it (notes it in ``log``) when it next runs."""

    PEERS = ("B-AAAAA", "B-BBBBB", "B-CCCCC")

    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.sent: list[tuple[float, Any]] = []
        self._links = {peer: trio.open_memory_channel[Any](100) for peer in self.PEERS}

    def send(self, message: Any) -> None:
        self.sent.append((trio.current_time(), message))
        self._links[message.dst][0].send_nowait(message)

    def ensure(self, peers: Any) -> None:
        pass

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for _, receive in self._links.values():
                nursery.start_soon(self._link, receive)

    async def _link(self, receive: Any) -> None:
        async for message in receive:
            self.log.append(type(message).__name__)


def _driver_on(node: RaftNode, tmp_path, store: Any) -> tuple[RaftDriver, Any, Any]:
    worker, fleet = _RecordingWorker(), _LinkedFleet(store.log)
    driver = RaftDriver(
        node.id,
        "G-AAAAA",
        ("127.0.0.1", 1),
        BrokerConfig(data_dir=tmp_path),
        network=None,
        store=store,
        worker=worker,
        node=node,
        addresses={},
        on_applied=lambda payload, result: None,
        on_snapshot=lambda queues, retained: None,
    )
    driver.peers = fleet
    return driver, worker, fleet


def _three() -> tuple[Cluster, RaftNode, RaftNode]:
    cluster = Cluster(("B-AAAAA", "B-BBBBB", "B-CCCCC"))
    return cluster, cluster.elect("B-AAAAA"), cluster.node("B-BBBBB")


async def test_a_small_ready_is_persisted_on_the_loop_after_its_messages_are_written(tmp_path):
    """A hand-off to the storage thread costs two cross-thread wake-ups: a short durable
    transaction runs on the loop's thread. A leader's, only once the link tasks have written
    its REPLICATEs (they must leave while it fsyncs); a replica's acknowledgement only after
    its transaction (persist before send)."""
    _, leader, follower = _three()
    log: list[Any] = []
    leader.propose(CreateQueue("Q-AAAAA00001"))
    driver, worker, fleet = _driver_on(leader, tmp_path / "a", _SlowStore(log=log))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fleet.run)
        await trio.testing.wait_all_tasks_blocked()  # (the link waits for messages)
        await driver._handle_ready(leader.ready())
        assert worker.where == ["here"]
        assert log == ["Replicate", "Replicate", "saved"]
        replicate = next(m for _, m in fleet.sent if m.dst == "B-BBBBB")

        log.clear()
        follower.step(replicate)
        driver, worker, fleet = _driver_on(follower, tmp_path / "b", _SlowStore(log=log))
        nursery.start_soon(fleet.run)
        await trio.testing.wait_all_tasks_blocked()
        await driver._handle_ready(follower.ready())
        await trio.testing.wait_all_tasks_blocked()
        assert worker.where == ["here"] and log == ["saved", "ReplicateResponse"]
        nursery.cancel_scope.cancel()


async def test_a_leaders_ready_of_many_commands_keeps_the_storage_thread(tmp_path):
    """Under load the leader's loop serves its connections while the thread waits on the
    fsync: a Ready that sends REPLICATEs and holds more than SENDING_COMMANDS commands is not
    persisted on the loop (a replica's of the same size is)."""
    from trio_broker._runtime._save_place import SENDING_COMMANDS

    _, leader, follower = _three()
    leader.propose(CommandGroup(tuple(_appends(SENDING_COMMANDS + 1))))
    driver, worker, fleet = _driver_on(leader, tmp_path / "a", _SlowStore())
    await driver._handle_ready(leader.ready())
    assert worker.where == ["thread"]
    follower.step(next(m for _, m in fleet.sent if m.dst == "B-BBBBB"))
    driver, worker, _ = _driver_on(follower, tmp_path / "b", _SlowStore())
    await driver._handle_ready(follower.ready())
    assert worker.where == ["here"]


async def test_after_a_slow_fsync_the_next_durable_transaction_goes_to_the_thread(tmp_path):
    """A slow or stalled disk holds the replica's loop (its reads, its heartbeat answers) for
    at most one transaction: the next durable one goes to the storage thread until an fsync
    is quick again."""
    from trio_broker._runtime._save_place import SLOW_FSYNC

    _, leader, follower = _three()
    store = _SlowStore(SLOW_FSYNC * 1.5)
    driver, worker, fleet = _driver_on(follower, tmp_path, store)
    for n in (1, 2, 3):
        leader.propose(CreateQueue(f"Q-AAAAA0000{n}"))
        rd = leader.ready()
        leader.advance()
        follower.step(next(m for m in rd.messages if m.dst == "B-BBBBB"))
        await driver._handle_ready(follower.ready())
        for _, answer in fleet.sent:
            leader.step(answer)
        fleet.sent.clear()
        store.seconds = 0.0  # (only the first fsync is slow)
    assert worker.where == ["here", "thread", "here"]


async def test_an_acknowledgement_handed_to_its_link_leaves_before_the_next_fsync(tmp_path):
    """The next REPLICATE was stepped before the driver's loop yielded: the acknowledgement
    of the previous one is still with its link's task, which runs only when the loop does.
    The next fsync on the loop waits until the link has written it (else it would leave one
    fsync late)."""
    _, leader, follower = _three()
    log: list[Any] = []
    driver, worker, fleet = _driver_on(follower, tmp_path, _SlowStore(log=log))
    replicates = []
    for n in (1, 2):
        leader.propose(CreateQueue(f"Q-AAAAA0000{n}"))
        rd = leader.ready()
        leader.advance()
        replicates.append(next(m for m in rd.messages if m.dst == "B-BBBBB"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fleet.run)
        await trio.testing.wait_all_tasks_blocked()
        follower.step(replicates[0])
        await driver._handle_ready(follower.ready())
        follower.step(replicates[1])  # (before the driver's loop yields)
        await driver._handle_ready(follower.ready())
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert worker.where == ["here", "here"]
    assert log == ["saved", "ReplicateResponse", "saved", "ReplicateResponse"]


# -- propose_many: a receive's requests submitted together -----------------------------------


def leading_driver(tmp_path) -> RaftDriver:
    driver = make_driver(tmp_path)
    for _ in range(100):  # a single voter elects itself (the Ready is not needed for that)
        driver.node.tick()
        if driver.node.is_leader:
            return driver
    raise AssertionError("the single voter did not lead")


def _appends(n: int) -> list[AppendMessage]:
    return [AppendMessage("Q-AAAAA00001", b'"%d"' % i) for i in range(n)]


async def test_propose_many_takes_one_unit_per_command_and_answers_each_at_its_index(tmp_path):
    driver = leading_driver(tmp_path)
    group = await driver.propose_many(_appends(3))
    assert driver._capacity.value == CAPACITY - 3 and driver.pending == 3
    members = [group.member(i) for i in range(3)]
    assert not any(m.done for m in members)
    assert driver._ledger._tokens == [(group, 0), (group, 1), (group, 2)]
    driver._settle((group, 1), "one")
    assert members[1].done and members[1].result == "one" and not members[0].done
    driver._settle((group, 0), "zero")
    driver._settle((group, 2), "two")
    assert [await m.wait() for m in members] == ["zero", "one", "two"]
    assert driver._capacity.value == CAPACITY


async def test_propose_many_on_a_follower_refuses_them_all_and_holds_nothing(tmp_path):
    driver = make_driver(tmp_path)
    assert not driver.node.is_leader
    refusal = await driver.propose_many(_appends(2))
    assert refusal.code == "NOT_LEADER"
    assert driver._capacity.value == CAPACITY and driver.pending == 0


async def test_propose_many_waits_for_units_and_can_be_cancelled(tmp_path):
    driver = leading_driver(tmp_path)
    first = await driver.propose_many(_appends(3))
    with trio.move_on_after(0.05) as scope:
        await driver.propose_many(_appends(2))  # only one unit is free
    assert scope.cancelled_caught
    assert driver._capacity.value == CAPACITY - 3 and driver.pending == 3
    async with trio.open_nursery() as nursery:
        got: list[Any] = []

        async def second() -> None:
            got.append(await driver.propose_many(_appends(2)))

        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert not got
        driver._settle((first, 0), "done")  # two units free now
    # (the settled token is still in the ledger's queue here: settling by hand skips it)
    assert len(got[0].results) == 2 and driver._capacity.value == 0
    try:
        await driver.propose_many(_appends(CAPACITY + 1))
    except ValueError:
        pass
    else:
        raise AssertionError("more than the capacity at once must be refused")


async def test_a_disk_full_leader_answers_every_proposal_of_a_group(tmp_path):
    """`_answer_disk_full` settles the ledger: queued members are refused, nothing held."""
    driver = leading_driver(tmp_path)
    group = await driver.propose_many(_appends(3))
    driver._answer_disk_full()
    assert all(group.done_at(i) for i in range(3))
    assert all(r.code == "UNAVAILABLE" for r in group.results)
    assert driver._capacity.value == CAPACITY and driver.pending == 0


async def test_a_low_disk_refuses_appends_of_a_group_at_their_index_and_proposes_the_rest(
    tmp_path,
):
    from trio_broker._runtime._disk_space import DiskState

    driver = leading_driver(tmp_path)
    driver.disk.state = DiskState.LOW
    commands: list[Any] = [*_appends(1), Ack("C-AAAAA", "Q-AAAAA00001", 1), *_appends(1)]
    group = await driver.propose_many(commands)
    assert group.done_at(0) and group.done_at(2) and not group.done_at(1)
    assert "out of disk space" in group.results[0].message
    assert driver._ledger._tokens == [(group, 1)]
    assert driver._capacity.value == CAPACITY - 1


async def test_a_group_answer_is_known_once_its_own_outcome_is_and_waits_for_the_group():
    from trio_broker._core._commands import MessageAppended
    from trio_broker._runtime._pending import GroupAnswer, PendingGroup

    group = PendingGroup(2)
    first, second = GroupAnswer(group, 0), GroupAnswer(group, 1)
    assert first.now is None and first.known() is None
    group.set(1, MessageAppended(7))
    assert second.known() == _appended(7) and first.known() is None
    with trio.move_on_after(0.05) as scope:
        await second.response()  # known: no wait
    assert not scope.cancelled_caught
    with trio.move_on_after(0.05) as scope:
        await first.response()  # not known: waits for the group
    assert scope.cancelled_caught
    group.set(0, MessageAppended(6))
    assert await first.response() == _appended(6)


def _appended(sequence_num: int) -> Any:
    from trio_broker._protocol import _messages as m

    return m.Appended(sequence_num, False)
