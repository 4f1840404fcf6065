"""Administration against a real 3-broker cluster (in one process): transfer the leadership,
step down on shutdown, compact the log on demand, add a member; through the command-line
client where there is a command for it."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from trio_broker._runtime import BrokerConfig, JoinFailed, open_broker
from trio_broker.client import connect
from trio_broker.testing import open_local_cluster, open_mock_cluster

from .wire import call

DEADLINE = 30


def seed(broker) -> tuple[str, str]:
    return ("--seed", f"127.0.0.1:{broker.port}")


async def wait_leader_is(cluster, broker_id: str):
    while True:
        leader = await cluster.wait_for_leader()
        if leader.broker_id == broker_id:
            return leader
        await trio.sleep(0.01)


# -- transfer-leader --------------------------------------------------------------------------


async def test_transfer_leader_to_a_named_voter(ram_path, cli):
    """Thesis 3.10 end to end: the named replica leads in exactly the next term, elected by a
    transfer (TIMEOUT_NOW), not after an election timeout."""
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path, 3) as cluster:
            old = await cluster.wait_for_leader()
            term = old.node.term
            replica = next(b for b in cluster.brokers.values() if b is not old)
            other = next(b for b in cluster.brokers.values() if b not in (old, replica))
            status, out, err = await cli(*seed(other), "transfer-leader", "--to", replica.broker_id)
            assert (status, err) == (0, "")
            assert out.strip() == f"{replica.broker_id} leads (term {term + 1})"
            assert replica.is_leader and replica.node.term == term + 1
            assert replica.statistics().transfers_received == 1
            assert old.statistics().transfers_completed == 1
            await wait_leader_is(cluster, replica.broker_id)
            # Writes go to the new leader at once.
            async with connect([f"127.0.0.1:{old.port}"]) as client:
                queue = await client.create_queue()
                assert await client.append(queue, "after") == 1


async def test_transfer_leader_without_a_target_picks_a_caught_up_voter(ram_path, cli):
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path, 3) as cluster:
            old = await cluster.wait_for_leader()
            status, out, err = await cli(*seed(old), "--json", "transfer-leader")
            assert (status, err) == (0, ""), err
            answer = json.loads(out)
            assert answer["leader_id"] != old.broker_id
            assert answer["term"] == old.node.term
            new = cluster.brokers[next(n for n, b in cluster.brokers.items() if b.is_leader)]
            assert new.broker_id == answer["leader_id"]


async def test_transfer_leadership_sent_to_a_replica_is_forwarded_to_the_leader(ram_path):
    """On the wire: TRANSFER_LEADERSHIP may reach any member, like REMOVE_MEMBER."""
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path, 3) as cluster:
            old = await cluster.wait_for_leader()
            term = old.node.term
            replica = next(b for b in cluster.brokers.values() if b is not old)
            answer = await call(
                replica.port,
                {"operation": "TRANSFER_LEADERSHIP", "broker_id": replica.broker_id},
            )
            assert answer == {
                "status": "success",
                "leader_id": replica.broker_id,
                "term": term + 1,
            }
            answer = await call(
                replica.port, {"operation": "TRANSFER_LEADERSHIP", "cluster_id": "G-ZZZZZ"}
            )
            assert answer["code"] == "WRONG_CLUSTER"


@pytest.mark.parametrize("who", ["leader", "stranger"])
async def test_transfer_leader_refuses_a_target_that_cannot_lead(ram_path, cli, who):
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path, 3) as cluster:
            leader = await cluster.wait_for_leader()
            term = leader.node.term
            target = leader.broker_id if who == "leader" else "B-ZZZZZ"
            status, out, err = await cli(*seed(leader), "transfer-leader", "--to", target)
            assert status == 1 and out == ""
            assert "BAD_REQUEST" in err and "cannot transfer leadership" in err
            assert leader.is_leader and leader.node.term == term


async def test_transfer_leader_of_a_single_broker_is_refused(ram_path, cli):
    with trio.fail_after(DEADLINE):
        async with open_broker(BrokerConfig(data_dir=ram_path / "alone", port=0)) as alone:
            status, out, err = await cli(*seed(alone), "transfer-leader")
            assert (status, out) == (1, "")
            assert "BAD_REQUEST" in err and "no other voter" in err
            assert alone.is_leader


async def test_transfer_to_a_stopped_voter_is_abandoned_and_the_leader_leads_on(ram_path, cli):
    """Thesis 3.10: without a new leader within an election timeout, the transfer is dropped
    and the leader takes requests again."""
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path, 3) as cluster:
            leader = await cluster.wait_for_leader()
            term = leader.node.term
            name, target = next((n, b) for n, b in cluster.brokers.items() if b is not leader)
            target_id = target.broker_id
            await cluster.stop(name)
            status, out, err = await cli(*seed(leader), "transfer-leader", "--to", target_id)
            assert status == 1 and out == ""
            assert "UNAVAILABLE" in err and "abandoned" in err
            assert leader.is_leader and leader.node.term == term
            assert leader.node.transfer_target is None
            async with connect([f"127.0.0.1:{leader.port}"]) as client:
                queue = await client.create_queue()
                assert await client.append(queue, 1) == 1


async def test_writes_during_a_transfer_are_redirected_and_none_acknowledged_is_lost(ram_path):
    """While the leader hands over, it answers NOT_LEADER naming the target; the client
    follows, and every acknowledged append is there afterwards, once, in order."""
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path, 3) as cluster:
            leader = await cluster.wait_for_leader()
            seeds = [f"127.0.0.1:{b.port}" for b in cluster.brokers.values()]
            acknowledged: list[tuple[int, int]] = []
            async with connect(seeds) as client:
                queue = await client.create_queue()
                stop = trio.Event()
                waiting_for: list[tuple[int, trio.Event]] = []

                async def produce():
                    i = 0
                    while not stop.is_set():
                        acknowledged.append((await client.append(queue, i), i))
                        i += 1
                        for count, event in waiting_for:
                            if len(acknowledged) >= count:
                                event.set()

                async def acknowledged_reach(count):
                    event = trio.Event()
                    waiting_for.append((count, event))
                    await event.wait()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(produce)
                    await acknowledged_reach(20)
                    result = await leader.transfer_leadership()
                    assert isinstance(result, str), result
                    await acknowledged_reach(len(acknowledged) + 20)
                    stop.set()
                read = []
                async with connect(seeds) as reader:
                    while (message := await reader.read(queue)) is not None:
                        read.append((message.sequence_num, message.data))
            assert cluster.brokers and not leader.is_leader
            assert set(acknowledged) <= set(read)
            assert [s for s, _ in read] == list(range(1, len(read) + 1))


# -- graceful step-down -----------------------------------------------------------------------


async def test_a_leader_that_stops_hands_its_leadership_over_first(ram_path):
    """open_broker's exit on the leader: a transfer, so the next leader is elected in the next
    term by TIMEOUT_NOW, without waiting for a failure timeout."""
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path, 3, failure_timeout=5.0) as cluster:
            leader = await cluster.wait_for_leader()
            term = leader.node.term
            await cluster.stop(cluster.name_of(leader), graceful=True)
            # Within a failure timeout (5 s here) no replica could have started an election.
            with trio.fail_after(4.0):
                new = await cluster.wait_for_leader()
            assert new.node.term == term + 1
            assert new.statistics().transfers_received == 1


async def test_a_cancelled_leader_does_not_step_down(autojump_clock, caplog):
    """A crash (``open_broker`` cancelled) hands nothing over and waits for nothing: its
    driver is cancelled with it (docs/replication.md, "Step-down on shutdown"); the others
    elect a leader of their own once their failure timeout has passed."""
    caplog.set_level(logging.INFO, logger="trio_broker")
    async with open_mock_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        caplog.clear()
        await cluster.stop(cluster.name_of(leader))
        events = [getattr(r, "event", None) for r in caplog.records]
        assert "broker.stopping" in events
        assert "leadership.transfer_started" not in events, events
        assert "broker.step_down_failed" not in events, events
        new = await cluster.wait_for_leader()
        assert new is not leader and new.statistics().transfers_received == 0


# -- snapshot ---------------------------------------------------------------------------------


async def test_snapshot_compacts_every_log_and_a_later_broker_installs_it(ram_path, cli):
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path, 3) as cluster:
            leader = await cluster.wait_for_leader()
            async with connect([f"127.0.0.1:{leader.port}"]) as client:
                queue = await client.create_queue()
                for i in range(30):
                    await client.append(queue, i)
            for b in cluster.brokers.values():
                while b.applied_index < leader.node.commit:
                    await b.driver.wait_changed()
            status, out, err = await cli(*seed(leader), "--json", "snapshot")
            assert (status, err) == (0, ""), err
            taken = {t["broker_id"]: t for t in json.loads(out)["snapshots"]}
            assert set(taken) == {b.broker_id for b in cluster.brokers.values()}
            for b in cluster.brokers.values():
                index = taken[b.broker_id]["snapshot_index"]
                assert index >= 32  # the queue, its 30 messages, the first leader's no-op ...
                assert b.node.log.snapshot_index == index
                stored = await b._worker.run(b._store.raft_state)
                assert stored.snapshot_index == index
                assert all(e.index > index for e in stored.entries)
            # A broker that joins now can only get the data as a snapshot (DATA_SYNC).
            newcomer = await cluster.start("b4")
            await cluster.wait_for_voters(4)
            while newcomer.applied_index < leader.node.commit:
                await newcomer.driver.wait_changed()
            assert newcomer.node.log.snapshot_index >= taken[leader.broker_id]["snapshot_index"]
            messages = await newcomer._worker.run(newcomer._store.messages, queue)
            assert len(messages) == 30


async def test_snapshot_of_one_broker_only(ram_path, cli):
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path, 3) as cluster:
            leader = await cluster.wait_for_leader()
            replica = next(b for b in cluster.brokers.values() if b is not leader)
            while replica.applied_index < leader.node.commit:
                await replica.driver.wait_changed()
            status, out, err = await cli(
                *seed(leader), "snapshot", "--broker", f"127.0.0.1:{replica.port}"
            )
            assert (status, err) == (0, "")
            (line,) = out.splitlines()
            assert line.startswith(f"{replica.broker_id}\tlog compacted up to ")
            assert replica.node.log.snapshot_index > 0
            assert leader.node.log.snapshot_index == 0


# -- add-member -------------------------------------------------------------------------------


async def test_add_member_adds_a_waiting_broker_that_becomes_a_voter(ram_path, cli):
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path, 3) as cluster:
            leader = await cluster.wait_for_leader()
            async with connect([f"127.0.0.1:{leader.port}"]) as client:
                queue = await client.create_queue()
                await client.append(queue, "before")
            waiting = await cluster.start(
                "b4", seeds=[], join_wait=True, cluster_id=leader.cluster_id
            )
            assert not waiting.node.config.members and not waiting.is_leader
            await trio.sleep(waiting.config.failure_timeout * 3)
            assert waiting.node.term == 0, "a waiting broker never campaigns"
            status, out, err = await cli(*seed(leader), "add-member", f"127.0.0.1:{waiting.port}")
            assert (status, err) == (0, ""), err
            assert out.startswith(f"added {waiting.broker_id} as a learner")
            await cluster.wait_for_voters(4)
            while waiting.applied_index < leader.node.commit:
                await waiting.driver.wait_changed()
            assert await waiting._worker.run(waiting._store.messages, queue) == [b'"before"']
            # Asking again for a member is harmless.
            status, out, err = await cli(*seed(leader), "add-member", f"127.0.0.1:{waiting.port}")
            assert status == 0, err
            assert len(leader.node.config.voters) == 4


async def test_a_waiting_broker_restarted_before_it_was_added_keeps_waiting(ram_path):
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path, 3) as cluster:
            leader = await cluster.wait_for_leader()
            options = {"seeds": [], "join_wait": True, "cluster_id": leader.cluster_id}
            first = await cluster.start("b4", **options)
            broker_id = first.broker_id
            await cluster.stop("b4", graceful=True)
            again = await cluster.start("b4", **options)
            assert again.broker_id == broker_id and not again.node.config.members
            answer = await call(
                leader.port, {"operation": "ADD_MEMBER", "host": "127.0.0.1", "port": again.port}
            )
            assert answer["status"] == "success" and answer["broker_id"] == broker_id, answer
            await cluster.wait_for_voters(4)
        # Without --join-wait (and without a seed) a broker that was never added cannot start.
        never = ram_path / "never"
        waiting = BrokerConfig(data_dir=never, port=0, join_wait=True, cluster_id="G-AAAAA")
        async with open_broker(waiting) as broker:
            assert not broker.node.config.members
        with pytest.raises(JoinFailed, match="never completed"):
            async with open_broker(BrokerConfig(data_dir=never, port=0)):
                pass


async def test_add_member_refuses_a_broker_of_another_cluster(ram_path, cli):
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path / "c", 3) as cluster:
            leader = await cluster.wait_for_leader()
            version = leader.node.cluster_version
            async with open_broker(BrokerConfig(data_dir=ram_path / "alone", port=0)) as alone:
                status, out, err = await cli(*seed(leader), "add-member", f"127.0.0.1:{alone.port}")
                assert status == 1 and out == ""
                assert "WRONG_CLUSTER" in err and alone.cluster_id in err
                assert alone.is_leader and alone.node.config.voters == {alone.broker_id}
            assert leader.node.cluster_version == version


async def test_add_member_refuses_a_broker_that_founded_a_cluster_of_the_same_id(ram_path, cli):
    """A broker started with the cluster's id but without --join-wait founded a cluster of
    its own: adding it would join two histories; refused."""
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path / "c", 3) as cluster:
            leader = await cluster.wait_for_leader()
            version = leader.node.cluster_version
            config = BrokerConfig(data_dir=ram_path / "twin", port=0, cluster_id=leader.cluster_id)
            async with open_broker(config) as twin:
                status, out, err = await cli(*seed(leader), "add-member", f"127.0.0.1:{twin.port}")
                assert status == 1 and out == ""
                assert "BAD_REQUEST" in err and "membership of its own" in err
            assert leader.node.cluster_version == version
            assert twin.broker_id not in leader.node.config.members


def test_join_wait_needs_a_cluster_id_and_no_seeds(ram_path):
    with pytest.raises(ValueError, match="join_wait"):
        BrokerConfig(data_dir=ram_path, join_wait=True)
    with pytest.raises(ValueError, match="join_wait"):
        BrokerConfig(data_dir=ram_path, join_wait=True, cluster_id="G-AAAAA", seeds=["127.0.0.1:1"])
