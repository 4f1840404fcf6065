"""A leader's receive of plain APPENDs held as columns from its parse to its apply
(``Runs._plain_commands``, ``Proposing.propose_columns``): the same commands, answers and
stored messages as the receive's appends made one by one, every refusal in its place
(docs/performance-history.md, "The leader's receive held as columns (thirteenth round)")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from trio_broker._core._append_columns import AppendColumns
from trio_broker._core._commands import AppendMessage, CommandGroup
from trio_broker._core._proposals import Proposals
from trio_broker._protocol import encode_frame
from trio_broker._protocol._codec import decode_client_request
from trio_broker._runtime._disk_space import DiskState
from trio_broker._runtime._in_step import answers_early
from trio_broker._runtime._pending import Capacity, PendingGroup
from trio_broker._runtime._poller import AVAILABLE as POLLER
from trio_broker._runtime._proposing import Proposing
from trio_broker._runtime._runs import Runs
from trio_broker.testing import open_local_cluster

from .wire import RawConnection, create_queue


class _Node:
    is_leader = True
    transfer_target = None


class _Disk:
    def __init__(self, state: DiskState = DiskState.OK, refused: bytes | None = None) -> None:
        self.state = state
        self.refused = refused

    def refusal(self, command: Any) -> Any:
        return "no room" if command.data == self.refused else None


class _Driver:
    def __init__(self, disk: _Disk | None = None) -> None:
        self._capacity = Capacity(1000)
        self.node = _Node()
        self.disk = disk or _Disk()
        self._ledger: Proposals[Any] = Proposals()
        self._lone = False
        self.max_group = 1024
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1

    def _propose_refusing(self, commands: list[Any], group: PendingGroup) -> None:
        Proposing._propose_refusing(self, commands, group)  # type: ignore[arg-type]


class _Config:
    max_in_flight = 1024


def _runs(driver: _Driver, *, max_data: int = 1 << 20) -> Runs:
    runs = object.__new__(Runs)
    runs._config = _Config()  # type: ignore[assignment]
    runs._max_data = max_data
    runs._driver = driver  # type: ignore[assignment]
    runs._closing = lambda: False  # type: ignore[method-assign]
    runs._wall_clock_ms = lambda: 1_765_000_000_123  # type: ignore[method-assign]
    return runs


def _plain(queue: str, value: Any) -> Any:
    request = decode_client_request(
        orjson.dumps({"operation": "APPEND", "queue_name": queue, "data": value})
    )
    assert type(request) is tuple
    return request


def _done(coroutine: Any) -> Any:
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the proposal waited")


def test_a_receive_to_one_queue_is_its_appends_as_columns() -> None:
    """Equal to the appends the per-message path makes (queue, value's bytes, no producer,
    the receive's stamp), none made; a receive to two queues, or with a value the loop must
    refuse or check, is given as before. Would catch a value's bytes or the stamp taken
    otherwise, or a receive to several queues held as one queue's run."""
    runs = _runs(_Driver(), max_data=300)
    values = ["a", 1, {"k": [1, 2]}, "é🙂\u2028", None]
    receive = [_plain("Q-ONE", value) for value in values]
    columns = runs._plain_commands(receive)
    assert type(columns) is AppendColumns and columns._made is None
    expected = [AppendMessage("Q-ONE", d, None, None, 1_765_000_000_123) for _, d, _ in receive]
    assert columns == tuple(expected)
    mixed = runs._plain_commands([*receive, _plain("Q-TWO", "b")])
    assert type(mixed) is list and mixed[-1] == AppendMessage(
        "Q-TWO", b'"b"', None, None, 1_765_000_000_123
    )
    assert runs._plain_commands([*receive, _plain("Q-ONE", "x" * 400)]) is None  # (too large)
    assert runs._plain_commands([*receive, _plain("name", "b")]) is None  # (a queue's name)
    assert runs._plain_commands([_plain("name", "a"), _plain("name", "b")]) is None


def test_columns_are_proposed_as_their_appends() -> None:
    """The same charge, the same tokens and the same queued commands; with the disk not OK,
    each append asked about and the one refused answered in place. Would catch columns
    queued while the disk refuses their appends, or units kept for refused ones."""
    columns = AppendColumns(["Q-A"], [5], [3], (b"1", b"2", b"3"))
    for disk in (_Disk(), _Disk(DiskState.LOW, refused=b"2")):
        driver, reference = _Driver(disk), _Driver(disk)
        group = _done(Proposing.propose_columns(driver, columns))  # type: ignore[arg-type]
        expected = _done(Proposing.propose_many(reference, list(columns)))  # type: ignore[arg-type]
        assert driver._capacity.value == reference._capacity.value
        assert driver._ledger.queued == reference._ledger.queued
        assert group.done_at(1) == expected.done_at(1) == (disk.state is not DiskState.OK)
        if disk.state is not DiskState.OK:
            assert group.results[1] == expected.results[1] == "no room"
        logs: list[list[Any]] = [[], []]
        for ledger, log in zip((driver._ledger, reference._ledger), logs, strict=True):
            ledger.propose_queued(lambda p, log=log: (log.append(p), (1, len(log)))[1])
        assert logs[0] == logs[1]
        tokens = [driver._ledger.waiting(1)[1], reference._ledger.waiting(1)[1]]  # type: ignore[index]
        assert [i for _, i in tokens[0]] == [i for _, i in tokens[1]]


def test_a_group_of_columns_answers_early_without_making_its_appends() -> None:
    columns = AppendColumns(["Q-A"], [5], [2], (b"1", b"2"))
    group = object.__new__(CommandGroup)
    object.__setattr__(group, "commands", columns)

    class _Entry:
        payload = group

    assert answers_early([_Entry()]) is True
    assert columns._made is None


# -- Over a real cluster: the same answers and messages as the appends made one by one ----------


def _frames(queue: str, values: list[Any]) -> bytes:
    return b"".join(
        encode_frame(orjson.dumps({"operation": "APPEND", "queue_name": queue, "data": value}))
        for value in values
    )


async def _scenario(base: Path) -> tuple[list[Any], list[Any]]:
    """Receives of plain APPENDs pipelined to a leader of 3: one queue, two queues, a value
    nested too deep and one longer than the receive's run takes among them, each answer in
    its place."""
    answers: list[Any] = []
    stored: list[Any] = []
    async with open_local_cluster(base, 3) as cluster:
        with trio.fail_after(30):
            leader = await cluster.wait_for_leader()
            one = await create_queue(leader.port)
            two = await create_queue(leader.port)
            conn = await RawConnection.open(leader.port)
            deep: Any = 1
            for _ in range(230):
                deep = [deep]
            receives = [
                (one, [f"v{i}" for i in range(16)]),
                (one, [{"k": i, "l": [i, "é🙂"]} for i in range(16)]),
                (one, ["a", deep, "b", "x" * 500, "c"]),
                (two, list(range(7))),
            ]
            mixed = _frames(one, ["m1", "m2"]) + _frames(two, ["m3"]) + _frames(one, ["m4"])
            sends = [(_frames(queue, values), len(values)) for queue, values in receives]
            for frames, count in [*sends, (mixed, 4)]:
                await conn.send_raw(frames)  # (each receive alone: its answers read first)
                for _ in range(count):
                    answer = await conn.receive()
                    assert answer is not None
                    answers.append(
                        {k: v for k, v in answer.items() if k not in ("message", "leader_hint")}
                    )
            await conn.aclose()
            succeeded = sum(a["status"] == "success" for a in answers)
            while True:  # (bounded by the deadline above: every broker applies them all)
                held = [
                    (
                        name,
                        q,
                        await b.driver._worker.run(lambda s=b.driver._store, q=q: s.messages(q)),
                    )
                    for name, b in sorted(cluster.brokers.items())
                    for q in (one, two)
                ]
                if sum(len(values) for _, _, values in held) == 3 * succeeded:
                    break
                await trio.sleep(0.02)
            stored = [(name, q == one, values) for name, q, values in held]
    return answers, stored


@pytest.mark.skipif(not POLLER, reason="a receive's frames are read together through the poller")
async def test_a_cluster_answers_and_stores_as_with_appends_made_one_by_one(
    ram_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same answers (each sequence number and each refusal in its place) and the same
    messages on every broker, the leader's receives held as columns or not. Would catch a
    receive's values stored under other numbers, a refusal moved, or an entry written
    otherwise (a replica would store other bytes)."""
    held, real = [0], Runs._plain_commands

    def as_columns(self: Runs, requests: Any) -> Any:
        commands = real(self, requests)
        held[0] += type(commands) is AppendColumns
        return commands

    monkeypatch.setattr(Runs, "_plain_commands", as_columns)
    got = await _scenario(ram_path / "columns")
    assert held[0] >= 2  # (the path under test was taken)

    def one_by_one(self: Runs, requests: Any) -> Any:
        commands = real(self, requests)
        return list(commands) if type(commands) is AppendColumns else commands

    monkeypatch.setattr(Runs, "_plain_commands", one_by_one)
    expected = await _scenario(ram_path / "appends")
    assert got == expected
    assert [a["status"] for a in got[0]].count("success") == len(got[0]) - 1  # (the deep one)
    assert sum(len(values) for _, _, values in got[1]) == 3 * (len(got[0]) - 1)


_: Callable[..., Any] = _scenario  # (keeps the scenario's signature checked)


async def test_a_group_makes_its_event_only_when_waited_for() -> None:
    """A receive's group answered through its callback (``GroupRun``: the usual run) makes no
    ``trio.Event``; a group waited for before its outcomes are known wakes once they are, and
    one waited for after returns at once (a checkpoint, as a set event's wait). Would catch a
    wait that never wakes (the event made after its outcomes were set) or one on a group of
    no proposals."""
    answered = PendingGroup(3)
    called: list[int] = []
    assert answered.when_done(lambda: called.append(1))
    assert answered.set_appended(0, 3, 10)
    assert called == [1] and answered._event is None
    await answered.wait()  # (known already: at once)
    await PendingGroup(0).wait()
    waited = PendingGroup(2)
    woken: list[int] = []

    async def waiter() -> None:
        await waited.wait()
        woken.append(len(waited.results))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            waited.set(0, "a")
            await trio.testing.wait_all_tasks_blocked()
            assert woken == []
            waited.set(1, "b")
    assert woken == [2]
