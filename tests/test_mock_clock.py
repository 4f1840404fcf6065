"""Partitions and crashes of real brokers, in virtual seconds (the mock-clock harness).

Every broker task runs as in production (listener, heartbeats, failure detector, elector,
replicators) with the production timings (0.2 s heartbeats, 1.5 s failure timeout), over
``trio_broker.testing``'s memory network and stores, under pytest-trio's ``autojump_clock``.
Deadlines are virtual: ``trio.fail_after(FT * 4)`` means "within four failure timeouts".
"""

from __future__ import annotations

import errno
import functools
import logging
import re

import pytest
import trio

from trio_broker._core import AppendMessage, CreateQueue, MessageAppended
from trio_broker._core._raft_messages import Config, Entry, HardState, NoOp
from trio_broker._runtime import BrokerConfig
from trio_broker._storage import DataDirInUse
from trio_broker.testing import MemoryNetwork, MemoryStore, open_memory_storage, open_mock_cluster
from trio_broker.testing._memory_store import StorageCrashed
from trio_broker.testing._mock_cluster import CLIENT

FT = BrokerConfig(data_dir="unused").failure_timeout
HB = BrokerConfig(data_dir="unused").heartbeat_interval
ELECTION_DEADLINE = 4 * FT
"""Election timeouts are drawn from [FT, 2 FT) (lower ids earlier); one split vote may cost one
more: four failure timeouts is generous, and still far below a stall."""
STEP_DOWN_DEADLINE = 2 * FT + HB
"""Check-quorum looks back one failure timeout, once per failure timeout."""


SCENARIO_DEADLINE = 40 * FT
"""Virtual seconds any scenario may take: under the autojump clock a wait that never ends
would spin forever in real time, so every scenario fails instead."""


def within_deadline(test):
    """Fail the scenario with TooSlowError after SCENARIO_DEADLINE virtual seconds."""

    @functools.wraps(test)
    async def wrapper(*args, **kwargs):
        with trio.fail_after(SCENARIO_DEADLINE):
            await test(*args, **kwargs)

    return wrapper


async def append(cluster, name: str, queue_id: str, value) -> int:
    r = await cluster.call(name, {"operation": "APPEND", "queue_name": queue_id, "data": value})
    assert r["status"] == "success", r
    return r["sequence_num"]


async def create_queue(cluster, name: str) -> str:
    r = await cluster.call(name, {"operation": "CREATE_QUEUE"})
    assert r["status"] == "success", r
    return r["queue_id"]


def followers(cluster, leader) -> list[str]:
    return sorted(n for n, b in cluster.brokers.items() if b is not leader)


@pytest.fixture
def broker_log(caplog):
    """The trio_broker log lines, whatever another test did to the logger's propagation."""
    logger = logging.getLogger("trio_broker")
    old_level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(old_level)


# -- the harness itself ------------------------------------------------------------------------


async def test_memory_network_cuts_break_streams_and_refuse_new_connections(autojump_clock):
    """Harness: isolate/partition reset live streams at once; connect fails while cut."""
    network = MemoryNetwork()
    a, b = network.host("a"), network.host("b")
    [listener], port = await b.listen("127.0.0.1", 0)
    client = await a.connect("127.0.0.1", port)
    server = await listener.accept()
    assert server.peer_name.startswith("a@127.0.0.1:")
    await client.send_all(b"ping")
    assert await server.receive_some() == b"ping"
    async with trio.open_nursery() as nursery:
        errors = []

        async def receive(stream):
            with pytest.raises(trio.BrokenResourceError) as exc:
                await stream.receive_some()
            errors.append(exc.value)

        nursery.start_soon(receive, server)
        nursery.start_soon(receive, client)
        await trio.sleep(1)
        start = trio.current_time()
        network.partition(["a"], ["b"])
    assert len(errors) == 2 and trio.current_time() == start  # woken at once, both ends
    with pytest.raises(OSError) as exc:
        await a.connect("127.0.0.1", port)
    assert exc.value.errno == errno.EHOSTUNREACH
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"lost")
    network.heal()
    assert (await a.connect("127.0.0.1", port)).peer_name.startswith("b@")
    await listener.aclose()
    with pytest.raises(ConnectionRefusedError):
        await a.connect("127.0.0.1", port)
    assert network.host("c").name == "c" and network.severed("a", "b") is False


async def test_one_way_block_holds_bytes_in_one_direction_until_healed(autojump_clock):
    """Harness: block(src, dst) holds src->dst bytes (never drops part of a stream);
    dst->src still flows; the held bytes arrive, in order, after heal."""
    network = MemoryNetwork()
    [listener], port = await network.host("b").listen("127.0.0.1", 0)
    _, port_a = await network.host("a").listen("127.0.0.1", 0)
    client = await network.host("a").connect("127.0.0.1", port)
    server = await listener.accept()
    network.block("a", "b")
    await client.send_all(b"one ")
    await client.send_all(b"two")
    await server.send_all(b"back")
    assert await client.receive_some() == b"back"
    with trio.move_on_after(10) as waited:
        await server.receive_some()
    assert waited.cancelled_caught
    with pytest.raises(OSError):
        await network.host("b").connect("127.0.0.1", port_a)  # a handshake needs both ways
    network.heal()
    assert await server.receive_some() == b"one two"
    await client.aclose()
    assert await server.receive_some() == b""


async def test_memory_store_keeps_what_save_persisted_and_is_held_by_one_broker():
    """Harness: save() is the durability point; a crash frees the store for a restart."""
    store = MemoryStore("x")
    storage = open_memory_storage(store)
    async with storage("unused") as (worker, opened):
        assert opened is store
        with pytest.raises(DataDirInUse):
            async with storage("unused"):
                pass  # pragma: no cover
        await worker.run(store.init_identity, "B-00001", "G-00001")
        await worker.run(store.bootstrap, Config(voters=frozenset(["B-00001"])))
        entries = [
            Entry(1, 1, NoOp()),
            Entry(1, 2, CreateQueue("Q-0000100001")),
            Entry(1, 3, AppendMessage("Q-0000100001", b'"m"')),
        ]
        results = await worker.run(
            lambda: store.save(
                hard_state=HardState(1, "B-00001", 3), entries=entries, committed=entries
            )
        )
        assert isinstance(results[2], MessageAppended) and results[0] is None
        store.crash()
        with pytest.raises(StorageCrashed, match="after the broker crashed"):
            await worker.run(store.log_size)
    async with storage("unused") as (_, again):
        state = again.raft_state()
    assert state.hard_state == HardState(1, "B-00001", 3)
    assert state.entries == entries and state.applied == 3
    assert store.messages("Q-0000100001") == [b'"m"']
    with pytest.raises(NotImplementedError, match="compact_threshold"):
        store.write_snapshot("anywhere")


def test_memory_store_keeps_up_with_the_sqlite_store():
    """Harness: MemoryStore offers every public method of Store (the runtime's storage API)."""
    from trio_broker._storage import Store

    wanted = {n for n in dir(Store) if not n.startswith("_")}
    wanted -= {"apply"}  # SQLite-only: applying outside a Ready (storage tests use it)
    # SQLite-only: the shared log's own call (_storage._shared_log), never the runtime's.
    wanted -= {"sync_shared"}
    assert wanted - set(dir(MemoryStore)) == set()


# -- scenarios ---------------------------------------------------------------------------------


@within_deadline
async def test_an_isolated_leader_is_replaced_steps_down_and_rejoins_as_follower(autojump_clock):
    """Raft 5.2 + check-quorum (thesis 6.2): the majority elects a new leader within a few
    failure timeouts; the cut-off leader steps down; after heal it follows the new leader."""
    async with open_mock_cluster(3) as cluster:
        old = await cluster.wait_for_leader()
        old_name, old_term = cluster.name_of(old), old.node.term
        cluster.isolate(old_name)
        cut_at = trio.current_time()
        with trio.fail_after(ELECTION_DEADLINE):
            new = await cluster.wait_for_leader()
        assert new is not old and new.node.term > old_term
        with trio.fail_at(cut_at + STEP_DOWN_DEADLINE):
            await cluster.wait_until(lambda: not old.is_leader)
        assert old.node.term == old_term  # pre-vote: alone, it never raises its term
        cluster.heal()
        with trio.fail_after(ELECTION_DEADLINE):
            leader = await cluster.stabilize()
        assert leader is new
        assert old.node.role.value == "follower" and old.leader_id == new.broker_id
        assert old.node.term == new.node.term


@within_deadline
async def test_acknowledged_appends_before_and_after_a_leader_crash_are_on_the_new_leader(
    autojump_clock,
):
    """Leader completeness (Raft 5.4.1): what was acknowledged survives the leader, even when
    only a bare majority held it; the election restriction keeps a lagging replica out."""
    async with open_mock_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        name = cluster.name_of(leader)
        # The lower id campaigns first (the core's preference): make it the one that lags.
        lagging, holder = followers(cluster, leader)
        queue_id = await create_queue(cluster, name)
        await cluster.stabilize()
        cluster.partition([name, holder], [lagging])
        before = [await append(cluster, name, queue_id, f"before-{i}") for i in range(20)]
        read = {"operation": "READ", "queue_name": queue_id, "client_id": "C-READR"}
        assert (await cluster.call(name, read))["sequence_num"] == 1
        assert cluster.messages(lagging, queue_id) == []
        await cluster.crash(name)
        cluster.heal()
        with trio.fail_after(ELECTION_DEADLINE):
            new = await cluster.wait_for_leader()
        new_name = cluster.name_of(new)
        assert new_name == holder  # the only one whose log holds every acknowledged entry
        after = [await append(cluster, new_name, queue_id, f"after-{i}") for i in range(20)]
        assert before + after == list(range(1, 41))
        r = await cluster.call(new_name, read)  # the acknowledged read moved the position
        assert (r["sequence_num"], r["data"]) == (2, "before-1")
        expected = [f"before-{i}" for i in range(20)] + [f"after-{i}" for i in range(20)]
        assert cluster.messages(new_name, queue_id) == expected
        assert cluster.messages(name, queue_id) == expected[:20]  # the crashed one's store
        await cluster.restart(name)
        with trio.fail_after(ELECTION_DEADLINE):
            await cluster.stabilize()
        for broker_name in cluster.brokers:
            assert cluster.messages(broker_name, queue_id) == expected


@within_deadline
async def test_a_minority_leader_acknowledges_nothing_and_its_entries_are_discarded(
    autojump_clock,
):
    """Commitment needs a majority (Raft 5.3, 5.4.2): the cut-off leader answers its writes
    NOT_LEADER or not at all, and its uncommitted entries do not survive the heal."""
    async with open_mock_cluster(3) as cluster:
        old = await cluster.wait_for_leader()
        old_name = cluster.name_of(old)
        others = followers(cluster, old)
        queue_id = await create_queue(cluster, old_name)
        await append(cluster, old_name, queue_id, "before")
        cluster.partition([old_name], others)  # the client still reaches both sides
        cut_at = trio.current_time()
        answers: list = []

        async def minority_append(value):
            request = {"operation": "APPEND", "queue_name": queue_id, "data": value}
            answers.append((value, await cluster.call(old_name, request)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(minority_append, "minority-while-leading")
            await trio.sleep(0.1)
            assert old.is_leader and old.node.log.last_index > old.node.commit
            with trio.fail_after(ELECTION_DEADLINE):
                new = await cluster.wait_for_leader(among=others)
            new_name = cluster.name_of(new)
            await append(cluster, new_name, queue_id, "majority")
            with trio.fail_at(cut_at + STEP_DOWN_DEADLINE):
                await cluster.wait_until(lambda: not old.is_leader)
            with trio.fail_after(HB):  # a follower refuses at once
                await minority_append("minority-after-step-down")
            # The proposal made while it led is neither committed nor refused yet.
            assert [value for value, _ in answers] == ["minority-after-step-down"], answers
            assert answers[0][1]["code"] == "NOT_LEADER", answers
            cluster.heal()
            with trio.fail_after(ELECTION_DEADLINE):
                await cluster.stabilize()
                await trio.sleep(HB)  # the truncated proposal's answer is on its way
            nursery.cancel_scope.cancel()
        # Once healed, the deposed leader's log is repaired: the proposal it could not commit
        # is truncated away and refused ("not applied"), never acknowledged.
        assert [value for value, _ in answers][1:] == ["minority-while-leading"], answers
        for value, answer in answers:
            assert answer["status"] == "error" and answer["code"] == "NOT_LEADER", (value, answer)
        for name in cluster.brokers:
            assert cluster.messages(name, queue_id) == ["before", "majority"]


@within_deadline
async def test_a_symmetric_2_1_partition_keeps_the_leader_and_the_replica_catches_up(
    autojump_clock,
):
    """Raft 5.3: a leader with a majority keeps committing; the cut-off replica is repaired
    from the leader's log after the heal."""
    async with open_mock_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        name, term = cluster.name_of(leader), leader.node.term
        kept, cut = followers(cluster, leader)
        queue_id = await create_queue(cluster, name)
        cluster.partition([name, kept], [cut])
        values = [f"v{i}" for i in range(30)]
        for value in values:
            await append(cluster, name, queue_id, value)
            await trio.sleep(0.1)  # three virtual seconds: two failure timeouts
        assert cluster.messages(kept, queue_id) == values
        assert cluster.messages(cut, queue_id) == []
        assert cluster.leader() is leader and leader.node.term == term
        cluster.heal()
        with trio.fail_after(ELECTION_DEADLINE):
            assert await cluster.stabilize() is leader
        assert cluster.messages(cut, queue_id) == values
        assert leader.node.term == term


@within_deadline
async def test_a_one_way_block_of_the_leader_outbound_traffic_elects_another_leader(
    autojump_clock,
):
    """Raft 5.2 with check-quorum: a leader whose messages no longer arrive is replaced,
    although it still hears its followers; after heal it follows the new leader."""
    async with open_mock_cluster(3) as cluster:
        old = await cluster.wait_for_leader()
        old_name, old_term = cluster.name_of(old), old.node.term
        queue_id = await create_queue(cluster, old_name)
        for other in followers(cluster, old):
            cluster.block(old_name, other)
        cut_at = trio.current_time()
        with trio.fail_after(ELECTION_DEADLINE):
            new = await cluster.wait_for_leader()
        new_name = cluster.name_of(new)
        assert new_name != old_name and new.node.term > old_term
        with trio.fail_at(cut_at + STEP_DOWN_DEADLINE):
            await cluster.wait_until(lambda: not old.is_leader)
        await append(cluster, new_name, queue_id, "under the new leader")
        cluster.heal()
        with trio.fail_after(ELECTION_DEADLINE):
            assert await cluster.stabilize() is new
        assert old.leader_id == new.broker_id
        for name in cluster.brokers:
            assert cluster.messages(name, queue_id) == ["under the new leader"]


@within_deadline
async def test_a_crashed_replica_restarts_from_its_store_and_catches_up(autojump_clock):
    """Raft 5.3 log repair: a restarted replica gets what it missed from the leader."""
    async with open_mock_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        name = cluster.name_of(leader)
        replica = followers(cluster, leader)[0]
        queue_id = await create_queue(cluster, name)
        await append(cluster, name, queue_id, 0)
        await cluster.stabilize()
        await cluster.crash(replica)
        kept = cluster.stores[replica].raft_state()
        for i in range(1, 50):
            await append(cluster, name, queue_id, i)
        assert cluster.messages(replica, queue_id) == [0]
        restarted = await cluster.restart(replica)
        assert restarted.node.log.last_index == kept.entries[-1].index  # rebuilt from its store
        with trio.fail_after(ELECTION_DEADLINE):
            assert await cluster.stabilize() is leader
        assert cluster.messages(replica, queue_id) == list(range(50))
        assert restarted.leader_id == leader.broker_id


@within_deadline
async def test_a_rejoining_partitioned_replica_does_not_disrupt_the_healthy_leader(
    autojump_clock, broker_log
):
    """Pre-vote (thesis 9.6): a replica cut off for many timeouts campaigns without raising
    its term, so after the heal the leader and the term are unchanged."""
    async with open_mock_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        term = leader.node.term
        cut = followers(cluster, leader)[0]
        cut_id = cluster.brokers[cut].broker_id
        cluster.isolate(cut)
        await trio.sleep(10 * FT)
        campaigns = [r for r in broker_log.messages if f"broker_id={cut_id} role=pre_" in r]
        assert len(campaigns) >= 2  # it did time out and campaign, more than once
        assert cluster.brokers[cut].node.term == term
        cluster.heal()
        with trio.fail_after(ELECTION_DEADLINE):
            assert await cluster.stabilize() is leader
        await trio.sleep(2 * FT)
        assert cluster.leader() is leader
        assert {b.node.term for b in cluster.brokers.values()} == {term}


ROLE_CHANGED = re.compile(r"role\.changed broker_id=(\S+) role=(\S+) term=(\d+) leader=(\S+)")


def role_changes(broker_log, broker_id: str) -> list[tuple[str, int, str]]:
    """(role, term, leader) of each ``role.changed`` line of one broker, in order."""
    found = [m.groups() for m in map(ROLE_CHANGED.fullmatch, broker_log.messages) if m]
    return [(role, int(term), leader) for b, role, term, leader in found if b == broker_id]


@within_deadline
async def test_leadership_changes_are_logged(autojump_clock, broker_log):
    """Operability: each role change is a ``role.changed`` line with the term and leader."""
    async with open_mock_cluster(3) as cluster:
        old = await cluster.wait_for_leader()
        assert role_changes(broker_log, old.broker_id)[-1] == ("leader", 1, old.broker_id)
        cluster.isolate(cluster.name_of(old))
        with trio.fail_after(ELECTION_DEADLINE):
            new = await cluster.wait_for_leader()
        assert role_changes(broker_log, new.broker_id)[-1] == (
            "leader",
            new.node.term,
            new.broker_id,
        )
        with trio.fail_after(STEP_DOWN_DEADLINE + 2 * FT):
            await cluster.wait_until(
                lambda: role_changes(broker_log, old.broker_id)[-1][0] != "leader"
            )
        role, term, _ = role_changes(broker_log, old.broker_id)[-1]
        assert role in ("follower", "pre_candidate") and term == 1
        cluster.heal()
        await cluster.stabilize()
        assert role_changes(broker_log, old.broker_id)[-1] == (
            "follower",
            new.node.term,
            new.broker_id,
        )


@within_deadline
async def test_a_check_quorum_step_down_is_logged_when_it_happens(autojump_clock, broker_log):
    """Operability: a leader that steps down says so at once (within a tick)."""
    async with open_mock_cluster(3) as cluster:
        old = await cluster.wait_for_leader()
        cluster.isolate(cluster.name_of(old))
        with trio.fail_after(STEP_DOWN_DEADLINE):
            await cluster.wait_until(lambda: not old.is_leader)
        await trio.sleep(HB)  # one heartbeat interval: a couple of ticks of its driver
        assert role_changes(broker_log, old.broker_id)[-1][0] != "leader"


@within_deadline
async def test_a_reset_connection_is_not_logged_as_a_crash(autojump_clock, broker_log):
    """A peer that goes away costs nothing and is no bug (_broker._handle_stream); its
    BrokenResourceError arrives wrapped in the connection nursery's ExceptionGroup."""
    async with open_mock_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        cluster.isolate(followers(cluster, leader)[0])
        await trio.sleep(FT)
    crashed = [r for r in broker_log.records if "connection.crashed" in r.getMessage()]
    assert crashed == []


@within_deadline
async def test_a_client_inside_a_partition_reaches_only_its_side(autojump_clock):
    """Harness: the client is a host too; partitions can include it."""
    async with open_mock_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        name = cluster.name_of(leader)
        other = followers(cluster, leader)
        cluster.partition([name], [*other, CLIENT])
        with pytest.raises(OSError):
            await cluster.call(name, {"operation": "CLUSTER_QUERY"})
        r = await cluster.call(other[0], {"operation": "CLUSTER_QUERY"})
        assert r["status"] == "success"
        assert (await cluster.call(name, {"operation": "CLUSTER_QUERY"}, src="b9"))["self_id"]


@within_deadline
async def test_a_leader_stopped_gracefully_hands_over_before_any_election_timeout(
    autojump_clock,
):
    """Step-down on shutdown: the next leader leads in the next term, sooner than the
    shortest election timeout a replica could have run out (one failure timeout)."""
    async with open_mock_cluster(3) as cluster:
        old = await cluster.wait_for_leader()
        old_term = old.node.term
        # Every replica has just heard from the leader: its election timer restarts now.
        await cluster.stabilize()
        started = trio.current_time()
        await cluster.stop(cluster.name_of(old), graceful=True)
        with trio.fail_at(started + FT / 2):
            new = await cluster.wait_for_leader()
        assert new.node.term == old_term + 1
        assert new.statistics().transfers_received == 1
