"""A replica acknowledges new entries before a long apply of the committed ones
(``APPLY_AHEAD``; docs/performance-history.md, "Batched READs: where a request's time goes")."""

from __future__ import annotations

import pytest
import trio

from tests.positions import agreed_positions, fill
from trio_broker._core import _commands as cmd
from trio_broker._core import _raft as raft
from trio_broker._core import _work_commands as wc
from trio_broker._core._raft_messages import NoOp
from trio_broker._runtime._save_place import APPLY_AHEAD, apply_weight
from trio_broker.testing import open_local_cluster

READ_SIZE = 300  # (above APPLY_AHEAD: each READ is a long apply)


def _entry(index: int, payload: object) -> raft.Entry:
    return raft.Entry(index=index, term=1, payload=payload)


def test_apply_weight_counts_the_messages_a_command_may_touch():
    read = cmd.ReadBatch(client_id="c", queue_id="q", max_messages=1000)
    records = wc.ReadRecords(client_id="c", queue_id="q", max_messages=7, peek=True)
    batch = cmd.AppendBatch(queue_id="q", data=(b"1",) * 100)
    one = cmd.AppendMessage(queue_id="q", data=b"1")
    group = cmd.CommandGroup(commands=(read, one, records))
    assert apply_weight(()) == 0
    assert apply_weight((_entry(1, one),)) == 1
    assert apply_weight((_entry(1, read),)) == 1000
    assert apply_weight((_entry(1, group), _entry(2, batch))) == 1000 + 1 + 7 + 100
    assert apply_weight((_entry(1, NoOp()),)) == 1
    assert READ_SIZE > APPLY_AHEAD


@pytest.mark.parametrize("path", ["reader", "driver"])
async def test_a_replica_acknowledges_before_a_long_apply(tmp_path, path):
    """Before: a replica's Ready that persisted new entries and applied committed READs did
    both in one transaction, and only then acknowledged: the leader's commit of the next
    READs waited for every replica's apply of the previous ones. Now the acknowledgement
    leaves after the fsync, and the apply runs after it, whether the task that read the
    REPLICATEs persists them (``reader``) or the driver's task does (``driver``: the
    reader's path refused); every READ is answered, every broker ends at the same
    positions."""
    from tests.wire import RawConnection, create_queue

    async with open_local_cluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        queue_id = await create_queue(leader.port)
        connection = await RawConnection.open(leader.port)
        await fill(connection, queue_id)

        events: dict[str, list[tuple]] = {}
        for name, broker in c.brokers.items():
            if broker is leader:
                continue
            driver, store = broker.driver, broker.driver._store
            seen = events.setdefault(name, [])

            def saving(save=store.save, seen=seen, **kwargs):
                entries, committed = kwargs.get("entries", ()), kwargs.get("committed", ())
                seen.append(("save", bool(entries), apply_weight(committed), frozenset(kwargs)))
                return save(**kwargs)

            def sending(messages, send=driver._send_at_once, seen=seen):
                seen.append(("send", any(isinstance(m, raft.ReplicateResponse) for m in messages)))
                return send(messages)

            store.save = saving
            driver._send_at_once = sending
            if path == "driver":
                driver._may_persist = lambda: False

        reads = [
            {"operation": "READ", "queue_name": queue_id, "client_id": f"C{i}"}
            | {"max_messages": READ_SIZE}
            for i in range(4)
        ]
        ahead = 0
        with trio.fail_after(30):
            for _ in range(20):  # (bounded: until a replica's reader applied ahead)
                await connection.send(*reads)
                for _ in reads:
                    answer = await connection.receive()
                    assert answer is not None and answer.get("status") == "success", answer
                counted = "ahead_in_step" if path == "reader" else "applied_ahead"
                ahead = sum(
                    getattr(b.driver, counted) for b in c.brokers.values() if b is not leader
                )
                # (and until one apply ahead ran as its own transaction in this task's path:
                # one handed to the driver's task, when the acknowledgement could not be
                # written at once, runs as a plain Ready; test_seq_ahead.py checks those)
                if ahead and any(
                    e[0] == "save" and e[3] == {"committed"} and e[2] > APPLY_AHEAD
                    for seen in events.values()
                    for e in seen
                ):
                    break
        assert ahead >= 1
        # (the reader's path counted apart: it did it, not the driver's task after a refusal)
        in_step = sum(b.driver.ahead_in_step for b in c.brokers.values() if b is not leader)
        assert (in_step >= 1) if path == "reader" else (in_step == 0)
        await connection.aclose()
        checked = 0
        for seen in events.values():
            for i, event in enumerate(seen):
                if event[0] == "save" and event[3] == {"committed"} and event[2] > APPLY_AHEAD:
                    # An apply ahead: its acknowledgement left before it, after the
                    # transaction that persisted the entries without applying them.
                    last = max(j for j in range(i) if seen[j][0] == "save")
                    assert seen[last][:3] == ("save", True, 0), seen[last : i + 1]
                    assert ("send", True) in seen[last + 1 : i], seen[last : i + 1]
                    checked += 1
        assert checked >= 1
        assert len(await agreed_positions(c)) == len(reads)
