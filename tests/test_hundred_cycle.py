"""A leader answers its committed entries before the fsync of the entries proposed after them
(``answers_first``; docs/performance.md, "100 connections: answers before the next fsync")."""

from __future__ import annotations

import random

import pytest
import trio

from tests.wire import RawConnection, create_queue
from trio_broker._core import _commands as cmd
from trio_broker._core import _raft as raft
from trio_broker._runtime import _driver as driver_module
from trio_broker._runtime import _save_place as save_place
from trio_broker._runtime._direct import DirectSocket
from trio_broker._runtime._save_place import answers_first
from trio_broker.testing import open_local_cluster

CONNECTIONS = 12
ROUNDS = 15


def _entry(index: int) -> raft.Entry:
    return raft.Entry(index=index, term=2, payload=cmd.AppendMessage(queue_id="q", data=b"1"))


def _ready(**fields: object) -> raft.Ready:
    empty = {
        "hard_state": None,
        "truncate_from": None,
        "entries": (),
        "snapshot": None,
        "messages": (),
        "persisted_messages": (),
        "committed_entries": (),
        "snapshots_to_send": (),
    }
    return raft.Ready(**(empty | fields))  # type: ignore[arg-type]


def test_answers_first_only_when_nothing_else_must_be_durable_first():
    new, old = (_entry(5),), (_entry(4),)
    hs = raft.HardState(term=2, voted_for="b1", commit=4)
    ready = _ready(hard_state=hs, entries=new, committed_entries=old)
    assert answers_first(ready, (2, "b1"))
    # A new term or vote is persisted before anything else.
    assert not answers_first(ready, (1, "b1"))
    assert not answers_first(ready, (2, None))
    # Nothing to answer, or nothing to fsync: the one transaction as before.
    assert not answers_first(_ready(hard_state=hs, entries=new), (2, "b1"))
    assert not answers_first(_ready(hard_state=hs, committed_entries=old), (2, "b1"))
    # A cut of the log, or an apply too long to hold the loop for.
    assert not answers_first(
        _ready(hard_state=hs, entries=new, committed_entries=old, truncate_from=5),
        (2, "b1"),
    )
    many = tuple(_entry(i) for i in range(1, 10))
    assert not answers_first(_ready(hard_state=hs, entries=new, committed_entries=many), (2, "b1"))


@pytest.mark.parametrize("fsync", ["loop", "thread"])
async def test_committed_appends_are_answered_before_the_next_entries_fsync(
    tmp_path, monkeypatch, fsync
):
    """Before: a leader's Ready holding new entries and committed ones ran one transaction for
    both, so the committed entries' answers waited for the fsync of the new ones. Now the
    apply runs first, in a transaction that persists no entry, and its answers are written
    before the transaction that persists the new entries ends (while the storage thread
    runs it); each connection's answers stay in order, every append is answered once with
    its own sequence number. ``thread``: every durable transaction of the leader on the
    storage thread (as under load), the answers written by a task while it runs."""
    written_by_task = []
    if fsync == "thread":
        monkeypatch.setattr(save_place, "SENDING_COMMANDS", 0)
        write_answers = driver_module._write_answers

        async def counting(held):
            written_by_task.append(len(held))
            await write_answers(held)

        monkeypatch.setattr(driver_module, "_write_answers", counting)
    async with open_local_cluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        queue_id = await create_queue(leader.port)
        connections = [await RawConnection.open(leader.port) for _ in range(CONNECTIONS)]
        store = leader.driver._store
        events: list[tuple] = []

        def saving(save=store.save, **kwargs):
            entries, committed = kwargs.get("entries", ()), kwargs.get("committed", ())
            events.append(("save", len(entries), len(committed)))
            try:
                return save(**kwargs)
            finally:
                events.append(("saved",))

        store.save = saving
        clients = {connection.stream.socket.getsockname()[1] for connection in connections}

        def send_now(self, data, send_now=DirectSocket.send_now):
            if self._socket.getpeername()[1] in clients:  # (not a peer link's write)
                events.append(("answer",))
            return send_now(self, data)

        monkeypatch.setattr(DirectSocket, "send_now", send_now)

        sequences: dict[int, list[int]] = {i: [] for i in range(CONNECTIONS)}

        async def client(i: int, connection: RawConnection) -> None:
            for r in range(ROUNDS):
                # (out of step: a connection's request arrives while others' are replicated)
                await trio.sleep(random.random() * 0.004)
                append = {"operation": "APPEND", "queue_name": queue_id, "data": f"{i}.{r}"}
                answer = await connection.call(append)
                assert answer.get("status") == "success", answer
                sequences[i].append(answer["sequence_num"])

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for i, connection in enumerate(connections):
                    nursery.start_soon(client, i, connection)
        for connection in connections:
            await connection.aclose()

    # No leader transaction both persisted new entries and applied committed ones that
    # answers_first would take (every run here is short: 1 command per connection).
    both = [e for e in events if e[0] == "save" and e[1] and e[2]]
    assert not both, both
    # The answers of an apply ahead of new entries were written before that fsync ended
    # (before it began when it runs on the event loop's thread, else while the storage
    # thread runs it): some answer between an apply-only save and the end of the next save
    # that persists entries.
    answered_between = 0
    for i, event in enumerate(events):
        if event[0] == "save" and not event[1] and event[2]:
            durable = next((j for j in range(i + 1, len(events)) if events[j][0] == "save"), None)
            if durable is None or not events[durable][1]:
                continue
            end = events.index(("saved",), durable)
            answered_between += ("answer",) in events[i:end]
    assert answered_between >= 1, events
    assert leader.driver.answered_first >= 1
    assert (len(written_by_task) >= 1) if fsync == "thread" else not written_by_task
    numbers = [n for seq in sequences.values() for n in seq]
    assert len(numbers) == len(set(numbers)) == CONNECTIONS * ROUNDS
    for seq in sequences.values():
        assert seq == sorted(seq)
