"""A broker whose stored term or vote is lost finds it at start, says so, and votes again only
once it knows a bound on the terms it voted in (docs/reliability.md, "A lost term or vote").
The core's rule is in tests/core/test_raft_lost_vote.py."""

from __future__ import annotations

import logging

import trio

from trio_broker._core._raft_messages import Entry, HardState, NoOp
from trio_broker._runtime._metrics import _StateCollector
from trio_broker._runtime._status import RequestRates, read_status
from trio_broker._storage import Store
from trio_broker.testing._mock_cluster import open_mock_cluster

NAMES = ("b1", "b2", "b3")


def test_the_store_finds_a_term_or_vote_that_no_longer_matches_its_checksum(tmp_path):
    store = Store(tmp_path)
    try:
        assert store.hard_state_loss() is None  # a new store: no past, nothing lost
        store.save(hard_state=HardState(term=4, voted_for="b2"), entries=[Entry(4, 1, NoOp())])
        assert store.hard_state_loss() is None
        state = store.raft_state()
        assert state.hard_state_loss is None and not state.hard_state.vote_lost
        with store._db:  # the disk changed the vote (a flipped bit, a misdirected write)
            store._db.execute("UPDATE meta SET value = 'b3' WHERE key = 'raft_voted_for'")
        assert "checksum" in store.hard_state_loss()
        assert "checksum" in store.raft_state().hard_state_loss
        with store._db:  # the disk lost both rows
            store._db.execute("DELETE FROM meta WHERE key IN ('raft_term', 'raft_voted_for')")
        assert "checksum" in store.hard_state_loss()
        # The core writes a new term and vote: the loss is over (its own flag says the rest).
        store.save(hard_state=HardState(term=6, voted_for="b1", vote_lost=True))
        assert store.hard_state_loss() is None
        assert store.raft_state().hard_state.vote_lost
        store.save(hard_state=HardState(term=6, voted_for="b1"))
        assert not store.raft_state().hard_state.vote_lost
        assert store.raft_state().hard_state == HardState(term=6, voted_for="b1")
    finally:
        store.close()


def test_a_store_written_before_the_checksum_is_judged_by_its_log(tmp_path):
    store = Store(tmp_path)
    try:
        store.save(hard_state=HardState(term=4, voted_for="b2"), entries=[Entry(4, 1, NoOp())])
        with store._db:
            store._db.execute("DELETE FROM meta WHERE key = 'raft_term_vote_crc'")
        assert store.hard_state_loss() is None  # intact: a term at least its log's
        with store._db:
            store._db.execute("UPDATE meta SET value = 3 WHERE key = 'raft_term'")
        assert "below" in store.hard_state_loss()
        with store._db:
            store._db.execute("DELETE FROM meta WHERE key IN ('raft_term', 'raft_voted_for')")
        assert "missing" in store.hard_state_loss()
    finally:
        store.close()


async def test_a_replica_that_lost_its_vote_says_so_and_votes_once_it_heard_the_others(
    autojump_clock, caplog
):
    """A replica's store loses its term and vote: it starts with one ``raft.hard_state_lost``
    WARNING, shows ``unverified`` in its status and metrics, grants no vote, and once the
    other voters' terms reached it (the leader's heartbeats, the other replica's answers)
    it moves to the largest and votes again; the group never stops serving."""
    caplog.set_level(logging.INFO, logger="trio_broker")
    async with open_mock_cluster(3) as cluster:
        leader = cluster.name_of(await cluster.wait_for_leader())
        queue = (await cluster.call(leader, {"operation": "CREATE_QUEUE"}))["queue_id"]
        replica = next(n for n in NAMES if n != leader)
        term = cluster.brokers[leader].driver.node.term
        await cluster.crash(replica)
        cluster.stores[replica].lose_hard_state()
        broker = await cluster.restart(replica)
        node = broker.driver.node
        assert node.vote_lost and node.unverified
        assert broker.statistics().unverified
        (family,) = [
            f
            for f in _StateCollector(broker, broker.metrics).collect()
            if f.name == "trio_broker_unverified"
        ]
        assert family.samples[0].value == 1.0
        status = await read_status(broker, RequestRates(broker))
        assert status["broker"]["unverified"] is True
        lines = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith("raft.hard_state_lost")
        ]
        assert len(lines) == 1 and broker.broker_id in lines[0] and "checksum" in lines[0]
        answer = await cluster.call(leader, {"operation": "APPEND", "queue_name": queue, "data": 1})
        assert answer["status"] == "success", answer
        with trio.fail_after(30):
            await cluster.wait_until(lambda: not broker.driver.node.vote_lost)
        node = broker.driver.node
        assert node.term >= term and node.voted_for is not None
        assert not cluster.stores[replica].hard_state.vote_lost
        with trio.fail_after(30):  # then verified by its leader's echo, as after a reboot
            await cluster.wait_until(lambda: not broker.driver.node.unverified)
        await cluster.stabilize()
        assert cluster.messages(replica, queue) == [1]
