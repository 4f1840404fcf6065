"""Retention policies over the wire and across replicas (docs/protocol.md, "Retention").

Enforcement is driven here by submitting ``ApplyRetention`` with a chosen clock, so that what
is deleted is decided by the test, not by when the periodic task happens to run; one test
checks the periodic task itself.
"""

from __future__ import annotations

import pytest
import trio

from trio_broker._core._commands import (
    AppendBatch,
    AppendMessage,
    ApplyRetention,
    CreateQueue,
    RetentionApplied,
    RetentionPolicy,
    SetRetention,
)
from trio_broker._errors import ProtocolError
from trio_broker._protocol._entries import decode_payload, encode_payload
from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker.testing import open_local_cluster

from .wire import RawConnection, append, call, create_queue

DEADLINE = 15


class FakeWallClock:
    """The leader's wall clock, in seconds since the epoch, moved by the test."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def set_retention(q: str, **retention) -> dict:
    return {"operation": "SET_RETENTION", "queue_name": q, "retention": retention}


async def queue_info(port: int, q: str) -> dict:
    r = await call(port, {"operation": "LIST_QUEUES"})
    return next(info for info in r["queues"] if info["queue_id"] == q)


async def enforce(broker, now_ms: int) -> RetentionApplied:
    result = await broker.submit(ApplyRetention(now_ms))
    assert isinstance(result, RetentionApplied), result
    return result


@pytest.fixture
async def clocked(ram_path):
    clock = FakeWallClock()
    config = BrokerConfig(data_dir=ram_path / "broker", port=0, wall_clock=clock)
    async with open_broker(config) as broker:
        yield broker, clock


async def test_max_messages_keeps_the_newest_and_sequence_numbers(clocked):
    broker, _ = clocked
    q = await create_queue(broker.port)
    for n in range(1, 6):
        await append(broker.port, q, n)
    r = await call(broker.port, set_retention(q, max_messages=2))
    assert r == {
        "status": "success",
        "queue_id": q,
        "retention": {"max_messages": 2, "max_age_ms": None, "delete_acknowledged": False},
    }
    # Setting a policy deletes nothing by itself; the next enforcement does.
    assert (await queue_info(broker.port, q))["retained"] == 5
    assert (await enforce(broker, 0)).trimmed == ((q, 4),)
    # An old client reading from the start gets the first retained message, in the original
    # READ shape; the next append carries on the numbering.
    r = await call(broker.port, {"operation": "READ", "queue_name": q, "client_id": "C-NEW01"})
    assert r == {"status": "success", "sequence_num": 4, "data": 4}
    assert await append(broker.port, q, 6) == 6
    info = await queue_info(broker.port, q)
    assert info["length"] == 6
    assert info["first_sequence_num"] == 4
    assert info["retained"] == 3
    assert info["retention"] == {
        "max_messages": 2,
        "max_age_ms": None,
        "delete_acknowledged": False,
    }
    assert info["clients"] == [{"client_id": "C-NEW01", "next_sequence_num": 5, "lag": 2}]
    # Seeking to the start (a deleted message) is allowed: the next read is the first retained.
    seek = {"operation": "SEEK", "queue_name": q, "client_id": "C-NEW01", "to": "start"}
    assert (await call(broker.port, seek))["next_sequence_num"] == 1
    r = await call(
        broker.port,
        {"operation": "READ", "queue_name": q, "client_id": "C-NEW01", "max_messages": 9},
    )
    assert [m["sequence_num"] for m in r["messages"]] == [4, 5, 6]


async def test_max_age_uses_the_stamps_the_leader_gave(clocked):
    broker, clock = clocked
    q = await create_queue(broker.port, retention={"max_age_ms": 10_000})
    start_ms = int(clock.now * 1000)
    for n in range(3):
        await append(broker.port, q, n)  # appended at start_ms, start_ms + 1 s, + 2 s
        clock.now += 1
    # 10.5 s after the first append: only the first is older than 10 s.
    assert (await enforce(broker, start_ms + 10_500)).trimmed == ((q, 2),)
    assert (await enforce(broker, start_ms + 10_500)).trimmed == ()
    assert (await enforce(broker, start_ms + 60_000)).trimmed == ((q, 4),)
    info = await queue_info(broker.port, q)
    assert (info["length"], info["first_sequence_num"], info["retained"]) == (3, 4, 0)
    r = await call(broker.port, {"operation": "READ", "queue_name": q, "client_id": "C-X"})
    assert r == {"status": "success", "message": "no_messages"}


async def test_delete_acknowledged_waits_for_every_known_client(clocked):
    broker, _ = clocked
    q = await create_queue(broker.port)
    for n in range(1, 5):
        await append(broker.port, q, n)
    assert (await call(broker.port, set_retention(q, delete_acknowledged=True)))["status"] == (
        "success"
    )
    # No client has a position yet: the rule deletes nothing.
    assert (await enforce(broker, 0)).trimmed == ()
    read = {"operation": "READ", "queue_name": q, "max_messages": 3}
    await call(broker.port, read | {"client_id": "C-FAST1"})
    await call(broker.port, read | {"client_id": "C-SLOW1", "max_messages": 1})
    assert (await enforce(broker, 0)).trimmed == ((q, 2),)
    await call(broker.port, read | {"client_id": "C-SLOW1", "max_messages": 3})
    assert (await enforce(broker, 0)).trimmed == ((q, 4),)
    # Removing the policy keeps everything from then on.
    assert (await call(broker.port, set_retention(q)))["retention"] == {
        "max_messages": None,
        "max_age_ms": None,
        "delete_acknowledged": False,
    }
    await call(broker.port, read | {"client_id": "C-FAST1", "max_messages": 3})
    await call(broker.port, read | {"client_id": "C-SLOW1", "max_messages": 3})
    assert (await enforce(broker, 0)).trimmed == ()
    assert (await queue_info(broker.port, q))["retention"] is None


async def test_a_consumer_group_holds_what_it_has_not_finished(clocked):
    """Over the wire, on SQLite: no rule deletes a message a group has not finished, and for
    delete_acknowledged a group is a reader of what it finished."""
    broker, _ = clocked
    q = await create_queue(broker.port)
    for n in range(1, 5):
        await append(broker.port, q, n)
    group = {"queue_name": q, "group": "workers"}
    assert (await call(broker.port, {"operation": "GROUP_JOIN", **group}))["status"] == "success"
    await call(broker.port, set_retention(q, max_messages=1))
    assert (await enforce(broker, 0)).trimmed == ()  # nothing delivered yet: all held
    read = {"operation": "GROUP_READ", **group, "member": "m", "max_messages": 2}
    assert [m["data"] for m in (await call(broker.port, read))["messages"]] == [1, 2]
    ack = {"operation": "GROUP_ACK", **group, "member": "m", "sequence_nums": [2]}
    assert (await call(broker.port, ack))["acknowledged"] == 1
    assert (await enforce(broker, 0)).trimmed == ()  # 1 is leased
    await call(broker.port, ack | {"sequence_nums": [1]})
    assert (await enforce(broker, 0)).trimmed == ((q, 3),)  # 3 was never delivered
    await call(broker.port, set_retention(q, delete_acknowledged=True))
    await call(broker.port, read)
    await call(broker.port, ack | {"sequence_nums": [3]})
    assert (await enforce(broker, 0)).trimmed == ((q, 4),)
    info = await queue_info(broker.port, q)
    assert (info["first_sequence_num"], info["retained"]) == (4, 1)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"retention": None},
        {"retention": []},
        {"retention": "max_messages=3"},
        {"retention": {"max_mesages": 3}},
        {"retention": {"max_messages": "3"}},
        {"retention": {"max_messages": 3.0}},
        {"retention": {"max_messages": True}},
        {"retention": {"max_messages": 0}},
        {"retention": {"max_messages": -1}},
        {"retention": {"max_messages": 10**12 + 1}},
        {"retention": {"max_age_ms": 0}},
        {"retention": {"max_age_ms": 10**15}},
        {"retention": {"max_age_ms": 1.5}},
        {"retention": {"delete_acknowledged": 1}},
        {"retention": {"delete_acknowledged": "true"}},
        {"retention": {}, "queue_name": 7},
        {"retention": {}, "queue_name": None},
    ],
)
async def test_bad_retention_requests_are_refused_and_change_nothing(broker, body):
    q = await create_queue(broker.port)
    r = await call(broker.port, {"operation": "SET_RETENTION", "queue_name": q} | body)
    assert r["status"] == "error" and r["code"] == "BAD_REQUEST", r
    assert (await queue_info(broker.port, q))["retention"] is None
    if "retention" in body and "queue_name" not in body:
        before = {
            q["queue_id"] for q in (await call(broker.port, {"operation": "LIST_QUEUES"}))["queues"]
        }
        r = await call(broker.port, {"operation": "CREATE_QUEUE", "retention": body["retention"]})
        if body["retention"] is None:
            assert r["status"] == "success"  # null means no policy, as an absent field
            return
        assert r["code"] == "BAD_REQUEST", r
        after = {
            q["queue_id"] for q in (await call(broker.port, {"operation": "LIST_QUEUES"}))["queues"]
        }
        assert after == before


async def test_set_retention_on_a_missing_queue(broker):
    missing = "Q-" + broker.cluster_id[2:] + "ZZZZZ"
    r = await call(broker.port, set_retention(missing, max_messages=1))
    assert r["code"] == "QUEUE_NOT_FOUND"


async def test_the_leader_enforces_periodically_while_a_policy_exists(ram_path):
    clock = FakeWallClock()
    config = BrokerConfig(
        data_dir=ram_path / "b", port=0, wall_clock=clock, retention_interval=0.01
    )
    async with open_broker(config) as broker:
        q = await create_queue(broker.port, retention={"max_messages": 1})
        for n in range(3):
            await append(broker.port, q, n)
        with trio.fail_after(DEADLINE):
            while (await queue_info(broker.port, q))["first_sequence_num"] != 3:
                await broker.driver.wait_changed()
        assert (await queue_info(broker.port, q))["retained"] == 1


async def test_replicas_hold_the_same_retained_messages(ram_path):
    """Enforcement goes through the log: every replica deletes exactly what the leader does,
    and a restarted replica comes back with the same retained set and policy."""
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path, 3) as cluster:
            leader = await cluster.wait_for_leader()
            q = await create_queue(leader.port, retention={"max_messages": 3})
            for n in range(10):
                await append(leader.port, q, n)
            await enforce(leader, 0)
            index = leader.applied_index
            for broker in cluster.brokers.values():
                while broker.applied_index < index:
                    await broker.driver.wait_changed()
            held = [
                (
                    await broker._worker.run(broker._store.messages, q),
                    (await broker._worker.run(broker._store.first_retained))[q],
                )
                for broker in cluster.brokers.values()
            ]
            assert held == [([b"7", b"8", b"9"], 8)] * 3
            replica = next(n for n, b in cluster.brokers.items() if b is not leader)
            await cluster.stop(replica)
            restarted = await cluster.start(replica)
            assert await restarted._worker.run(restarted._store.messages, q) == [b"7", b"8", b"9"]
            assert q in restarted._retained


async def test_a_snapshot_carries_policies_stamps_and_the_deleted_front(ram_path):
    """A replica that catches up by DATA_SYNC gets the queue tables whole: the retained
    messages, their stamps, the policy (so it enforces once it leads), the next number."""
    with trio.fail_after(DEADLINE * 2):
        async with open_local_cluster(
            ram_path, 3, compact_threshold=50, compact_keep=5, compact_bytes=2_000
        ) as cluster:
            leader = await cluster.wait_for_leader()
            lagging = next(n for n, b in cluster.brokers.items() if b is not leader)
            await cluster.stop(lagging)
            q = await create_queue(leader.port, retention={"max_messages": 20})
            conn = await RawConnection.open(leader.port)
            await conn.send(
                *[{"operation": "APPEND", "queue_name": q, "data": i} for i in range(150)]
            )
            for i in range(150):
                assert (await conn.receive())["sequence_num"] == i + 1
            await conn.aclose()
            await enforce(leader, 0)
            while leader.node.log.snapshot_index == 0:
                await leader.driver.wait_changed()
            restarted = await cluster.start(lagging)
            while restarted.applied_index < leader.applied_index:
                await restarted.driver.wait_changed()
            assert restarted.node.log.snapshot_index > 0

            def stamps(broker):
                return broker._store._db.execute(
                    "SELECT sequence_num, appended_ms FROM queue_data"
                    " WHERE queue_number = (SELECT queue_number FROM queues WHERE queue_id = ?)"
                    " ORDER BY sequence_num",
                    (q,),
                ).fetchall()

            expected = await leader._worker.run(stamps, leader)
            assert [seq for seq, _ in expected] == list(range(131, 151))
            assert all(stamp is not None for _, stamp in expected)
            assert await restarted._worker.run(stamps, restarted) == expected
            assert q in restarted._retained
            await cluster.stop(cluster.name_of(leader))
            new_leader = await cluster.wait_for_leader()
            assert await append(new_leader.port, q, "next") == 151


async def test_age_retention_across_a_leader_crash_under_the_mock_clock(autojump_clock):
    """The wall clock is virtual time here. Messages expire on the leader's schedule; after
    the leader crashes, the new leader (which learnt the policy from the log) goes on
    enforcing, and every broker, the crashed one once restarted, retains the same messages."""
    from trio_broker.testing import open_mock_cluster

    with trio.fail_after(600):
        async with open_mock_cluster(3, wall_clock=trio.current_time) as cluster:
            first = cluster.name_of(await cluster.wait_for_leader())

            async def request(name: str, body: dict) -> dict:
                answer = await cluster.call(name, body)
                assert answer["status"] == "success", answer
                return answer

            retention = {"max_age_ms": 5_000}
            q = (await request(first, {"operation": "CREATE_QUEUE", "retention": retention}))[
                "queue_id"
            ]
            for value in "abc":
                await request(first, {"operation": "APPEND", "queue_name": q, "data": value})
                await trio.sleep(1)
            await cluster.crash(first)
            leader = await cluster.wait_for_leader()
            second = cluster.name_of(leader)
            for value in "de":
                await request(second, {"operation": "APPEND", "queue_name": q, "data": value})
            store = cluster.stores[second]
            await cluster.wait_until(lambda: store.first_retained()[q] >= 4)
            assert cluster.messages(second, q)[-2:] == ["d", "e"]
            await cluster.wait_until(lambda: store.first_retained()[q] == 6)
            assert store.queue_lengths()[q] == 5 and cluster.messages(second, q) == []
            await cluster.start(first)
            for name in cluster.brokers:
                await cluster.wait_applied(name, leader.applied_index)
                assert cluster.stores[name].first_retained()[q] == 6
            answer = await request(second, {"operation": "APPEND", "queue_name": q, "data": "f"})
            assert answer["sequence_num"] == 6


@pytest.mark.parametrize(
    "command",
    [
        CreateQueue("Q-AAAAABBBBB"),
        CreateQueue("Q-AAAAABBBBB", RetentionPolicy(max_messages=3, delete_acknowledged=True)),
        AppendMessage("Q-AAAAABBBBB", b"1", appended_ms=1_700_000_000_000),
        AppendMessage("Q-AAAAABBBBB", b"1", "P-1", 4, appended_ms=-5),
        AppendBatch("Q-AAAAABBBBB", (b"1", b"[2]"), appended_ms=7),
        SetRetention("Q-AAAAABBBBB", RetentionPolicy(max_age_ms=60_000)),
        SetRetention("Q-AAAAABBBBB", RetentionPolicy()),
        ApplyRetention(1_700_000_000_000),
    ],
)
def test_log_entries_of_retention_round_trip(command):
    assert decode_payload(encode_payload(command)) == command


def test_log_entries_written_before_retention_still_decode():
    old = b'{"type": "APPEND_MESSAGE", "queue_id": "Q-AAAAABBBBB", "data": 1}'
    assert decode_payload(old) == AppendMessage("Q-AAAAABBBBB", b"1", appended_ms=None)
    old = b'{"type": "CREATE_QUEUE", "queue_id": "Q-AAAAABBBBB"}'
    assert decode_payload(old) == CreateQueue("Q-AAAAABBBBB")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type": "APPLY_RETENTION"}',
        b'{"type": "APPLY_RETENTION", "now_ms": "5"}',
        b'{"type": "SET_RETENTION", "queue_id": "Q-A", "retention": 3}',
        b'{"type": "SET_RETENTION", "queue_id": "Q-A", "retention": {"max_messages": 1.5}}',
        b'{"type": "SET_RETENTION", "queue_id": "Q-A", "retention": {"delete_acknowledged": 1}}',
        b'{"type": "APPEND_MESSAGE", "queue_id": "Q-A", "data": 1, "appended_ms": true}',
    ],
)
def test_malformed_retention_log_entries_are_refused(raw):
    with pytest.raises(ProtocolError):
        decode_payload(raw)


async def test_enforcements_are_proposed_only_while_a_policy_exists(autojump_clock):
    """No queue with a policy, no ApplyRetention entries: an idle cluster's log stays still."""
    from trio_broker.testing import open_mock_cluster

    with trio.fail_after(600):
        async with open_mock_cluster(1, wall_clock=trio.current_time) as cluster:
            leader = await cluster.wait_for_leader()
            name = cluster.name_of(leader)
            q = (await cluster.call(name, {"operation": "CREATE_QUEUE"}))["queue_id"]
            idle = leader.node.log.last_index
            await trio.sleep(30)
            assert leader.node.log.last_index == idle
            await cluster.call(name, set_retention(q, max_messages=5))
            await trio.sleep(30)
            # The SetRetention entry, then enforcements (one per retention_interval at most).
            assert 2 < leader.node.log.last_index - idle <= 2 + 30
            await cluster.call(name, set_retention(q))
            stopped = leader.node.log.last_index
            await trio.sleep(30)
            assert leader.node.log.last_index <= stopped + 1  # at most one already under way
