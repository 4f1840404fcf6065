"""Receives of plain APPENDs held as columns by a real leader of three (``Runs._plain_commands``
to the replicas' apply), several connections at once so that the ledger joins receives of
several connections and queues into one entry: each connection's answers in its order,
each sequence number naming the value sent there on every broker, a queue that does not
exist, a value nested too deep and one too long refused in place, the same with members
that do not read ``APPEND_RUNS`` (the COMMAND_GROUP form), and after every broker stops at
once, before a replica's apply (``APPLY_LAG``), each replays its saved entries to the same
messages (docs/performance-history.md, "The leader's receive held as columns (thirteenth
round)")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from trio_broker._core._append_columns import AppendColumns
from trio_broker._protocol import encode_frame
from trio_broker._runtime._peer_mux import GroupLinks
from trio_broker._runtime._pending import Capacity
from trio_broker._runtime._poller import AVAILABLE as POLLER
from trio_broker._runtime._runs import Runs
from trio_broker.testing import open_local_cluster

from .wire import RawConnection, create_queue

_VALUES = ["é🙂", 'q"\\', "\x01\n\u2028", {"k": ["é", None, 1.5]}, -(2**63), "x" * 300, [], ""]


def _frames(queue: str, values: list[Any]) -> bytes:
    return b"".join(
        encode_frame(orjson.dumps({"operation": "APPEND", "queue_name": queue, "data": value}))
        for value in values
    )


async def _stored(cluster: Any, queues: list[str]) -> dict[str, dict[str, list[Any]]]:
    return {
        name: {
            q: [
                orjson.loads(v)
                for v in await b.driver._worker.run(lambda s=b.driver._store, q=q: s.messages(q))
            ]
            for q in queues
        }
        for name, b in sorted(cluster.brokers.items())
    }


async def _scenario(base: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Four connections pipelining receives at once (two to one queue, one to another, one to
    a queue that does not exist); the messages each queue should hold from the answers, and
    what every broker holds, before and after all of them stop and start again."""
    expected: dict[str, dict[int, Any]] = {}
    refused: list[str] = []
    async with open_local_cluster(base, 3, failure_timeout=0.3, max_frame=4096) as cluster:
        with trio.fail_after(30):
            leader = await cluster.wait_for_leader()
            one = await create_queue(leader.port)
            two = await create_queue(leader.port)
            missing = "Q-" + "0" * len(one[2:])
            deep: Any = 1
            for _ in range(230):  # (nested deeper than a stored value may be)
                deep = [deep]
            big = "x" * 3900  # (longer than a stored value may be, in a frame that fits)
            plans = [
                (one, [[f"a{r}-{i}" for i in range(12)] for r in range(3)]),
                (one, [[_VALUES[(r + i) % len(_VALUES)] for i in range(9)] for r in range(3)]),
                (two, [[r * 100 + i for i in range(5)] for r in range(3)]),
                (missing, [["lost", "lost"] for _ in range(3)]),
                (one, [["d1", deep, "d2", big, "d3"] for _ in range(3)]),
            ]

            async def producer(queue: str, receives: list[list[Any]]) -> None:
                conn = await RawConnection.open(leader.port)
                try:
                    for values in receives:
                        await conn.send_raw(_frames(queue, values))
                        for value in values:  # (each answer in its place, in order)
                            answer = await conn.receive()
                            assert answer is not None
                            if queue == missing or value is deep or value is big:
                                assert answer["status"] == "error", answer
                                refused.append(answer["status"])
                                continue
                            assert answer["status"] == "success", answer
                            number = answer["sequence_num"]
                            assert number not in expected.setdefault(queue, {})
                            expected[queue][number] = value
                finally:
                    await conn.aclose()

            async with trio.open_nursery() as nursery:
                for queue, receives in plans:
                    nursery.start_soon(producer, queue, receives)
            queues = [one, two, missing]
            want = {q: [v for _, v in sorted(expected.get(q, {}).items())] for q in queues}
            for numbers in expected.values():  # (no gap: each number answered once)
                assert sorted(numbers) == list(range(min(numbers), min(numbers) + len(numbers)))
            assert len(refused) == 6 + 6
            while True:  # (bounded by the deadline: every broker applies them all)
                held = await _stored(cluster, queues)
                if all(h == want for h in held.values()):
                    break
                await trio.sleep(0.02)
            # Another round, then every broker stops at once, before the replicas' lagging
            # apply: each replays what it saved.
            async with trio.open_nursery() as nursery:
                for queue, receives in plans[:3]:
                    nursery.start_soon(producer, queue, receives[:1])
            want = {q: [v for _, v in sorted(expected.get(q, {}).items())] for q in queues}
            for name in sorted(cluster.brokers):
                await cluster.stop(name)
            for name in ("b1", "b2", "b3"):
                await cluster.start(name)
            await cluster.wait_for_leader()
            while True:
                again = await _stored(cluster, queues)
                if all(h == want for h in again.values()):
                    break
                await trio.sleep(0.02)
    return want, again


@pytest.mark.skipif(not POLLER, reason="a receive's frames are read together through the poller")
@pytest.mark.parametrize("runs", [True, False])
async def test_interleaved_receives_are_answered_stored_and_replayed_in_place(
    ram_path: Any, monkeypatch: pytest.MonkeyPatch, runs: bool
) -> None:
    """Would catch an entry that joins two connections' receives in the wrong order (a
    number answered for another value), a refusal moved off its append, a COMMAND_GROUP form
    of columns that a replica stores otherwise, or a replay after a stop that stores other
    values than the leader answered."""
    taken = [0]
    real = Runs._plain_commands

    def counted(self: Runs, requests: Any) -> Any:
        commands = real(self, requests)
        taken[0] += type(commands) is AppendColumns
        return commands

    monkeypatch.setattr(Runs, "_plain_commands", counted)
    if not runs:
        monkeypatch.setattr(GroupLinks, "reads_append_runs", lambda self, members: False)
    want, held = await _scenario(ram_path / "cluster")
    assert taken[0] >= 9  # (the path under test was taken)
    assert all(h == want for h in held.values())
    assert sum(map(len, want.values())) == 36 + 27 + 15 + 9 + 12 + 9 + 5


@pytest.mark.skipif(not POLLER, reason="a receive's frames are read together through the poller")
async def test_receives_waiting_for_the_in_flight_limit_are_answered_in_place(
    ram_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six connections at once, each receive of six APPENDs to one of two queues, with room
    for sixteen appends pending on the leader (eight in flight a connection) and a small
    buffer budget: a receive's columns wait for their units (``Capacity.acquire``) while
    others' are proposed. Would catch columns queued before their units are free (more
    pending than the limit: a unit given back twice), or a waiting receive's answers given
    to another's values."""
    taken = [0]
    real = Runs._plain_commands

    def counted(self: Runs, requests: Any) -> Any:
        commands = real(self, requests)
        taken[0] += type(commands) is AppendColumns
        return commands

    monkeypatch.setattr(Runs, "_plain_commands", counted)
    waited = [0]
    acquire = Capacity.acquire

    async def counted_acquire(self: Capacity, count: int = 1) -> None:
        waited[0] += 1
        await acquire(self, count)

    monkeypatch.setattr(Capacity, "acquire", counted_acquire)
    expected: dict[str, dict[int, Any]] = {}
    async with open_local_cluster(
        ram_path / "limit",
        3,
        failure_timeout=0.3,
        max_in_flight=8,
        max_pending=16,
        max_buffered_bytes=64 * 1024,
    ) as cluster:
        with trio.fail_after(30):
            leader = await cluster.wait_for_leader()
            queues = [await create_queue(leader.port), await create_queue(leader.port)]

            async def producer(at: int) -> None:
                queue = queues[at % 2]
                conn = await RawConnection.open(leader.port)
                try:
                    for r in range(4):
                        values = [f"{at}-{r}-{i}-é" for i in range(6)]
                        await conn.send_raw(_frames(queue, values))
                        for value in values:
                            answer = await conn.receive()
                            assert answer is not None and answer["status"] == "success", answer
                            numbers = expected.setdefault(queue, {})
                            assert answer["sequence_num"] not in numbers
                            numbers[answer["sequence_num"]] = value
                finally:
                    await conn.aclose()

            async with trio.open_nursery() as nursery:
                for at in range(6):
                    nursery.start_soon(producer, at)
            want = {q: [v for _, v in sorted(expected[q].items())] for q in queues}
            for q in queues:  # (no gap, and each connection's values in its order)
                assert sorted(expected[q]) == list(range(1, 73))
                for at in range(q == queues[1], 6, 2):
                    mine = [v for v in want[q] if v.startswith(f"{at}-")]
                    assert mine == [f"{at}-{r}-{i}-é" for r in range(4) for i in range(6)]
            while True:
                held = await _stored(cluster, queues)
                if all(h == want for h in held.values()):
                    break
                await trio.sleep(0.02)
            assert leader.driver._capacity.value == 16  # (every unit back)
    assert taken[0] >= 12 and waited[0] >= 1  # (the path under test, and its wait, taken)


@pytest.mark.skipif(not POLLER, reason="a receive's frames are read together through the poller")
async def test_a_change_of_leader_under_columns_loses_no_answered_append(ram_path: Any) -> None:
    """Three connections pipeline receives of eight APPENDs while the leader hands over: each
    success's value is stored at its number on every broker, no value refused before it
    was proposed (NOT_LEADER, a transfer) or answered as not applied is stored, and no value
    is stored twice. Would catch a receive's columns dropped from the ledger at the change of
    term yet answered, or requeued and proposed again by the old leader."""
    answers: list[tuple[str, Any]] = []
    async with open_local_cluster(ram_path / "handover", 3, failure_timeout=0.3) as cluster:
        with trio.fail_after(30):
            leader = await cluster.wait_for_leader()
            queue = await create_queue(leader.port)
            started = trio.Event()

            async def producer(at: int) -> None:
                conn = await RawConnection.open(leader.port)
                try:
                    for r in range(8):
                        values = [f"{at}-{r}-{i}" for i in range(8)]
                        await conn.send_raw(_frames(queue, values))
                        for value in values:
                            answer = await conn.receive()
                            assert answer is not None
                            answers.append((value, answer))
                        started.set()
                finally:
                    await conn.aclose()

            async with trio.open_nursery() as nursery:
                for at in range(3):
                    nursery.start_soon(producer, at)
                await started.wait()
                result = await leader.transfer_leadership()
                assert isinstance(result, str), result
            new = await cluster.wait_for_leader()
            assert new is not leader
            await create_queue(new.port)  # (an entry of the new term: all before it applied)
            succeeded = {a["sequence_num"]: v for v, a in answers if a["status"] == "success"}
            while True:
                held = await _stored(cluster, [queue])
                stored = [h[queue] for h in held.values()]
                if all(s == stored[0] for s in stored) and len(stored[0]) >= len(succeeded):
                    break
                await trio.sleep(0.02)
    values = stored[0]
    assert len(set(values)) == len(values)  # (none stored twice)
    for number, value in succeeded.items():
        assert values[number - 1] == value
    never = [
        v
        for v, a in answers
        if a["status"] != "success" and "unknown" not in orjson.dumps(a).decode().lower()
    ]
    assert not set(never) & set(values), [a for v, a in answers if v in set(never) & set(values)]
    assert len(succeeded) >= 8
