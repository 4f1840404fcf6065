"""The driver's bookkeeping per replication cycle asks less when nothing changed
(docs/performance.md, "The fixed cost per replication cycle, and the driver's bookkeeping
(fourteenth round)"):

- ``Leadership.note_role`` (after every step and every advance) skips its three notes behind
  one guard, and still says everything the notes said, in the same order, over random
  changes of role, term, leader, transfer, recovery, losses and verification;
- ``RaftDriver.signal_changed`` (after every Ready) replaces its event only for tasks
  already waiting in ``wait_changed``, which it still wakes;
- an acknowledgement that commits nothing (a leader's second of each entry with three
  voters) asks the core's ``has_ready`` once, not twice.
"""

from __future__ import annotations

import random
from typing import Any

import trio

from tests.lone_driver import lone_driver
from trio_broker._core import _raft as raft
from trio_broker._core._raft_messages import ReplicateResponse
from trio_broker._runtime import _leadership as leadership_module
from trio_broker._runtime._leadership import Leadership
from trio_broker.testing import open_local_cluster


class _Log:
    last_index = 40


class _Node:
    """The fields of the core that ``note_role`` reads, set by the test."""

    def __init__(self) -> None:
        self.role = raft.Role.FOLLOWER
        self.term = 1
        self.leader_id: str | None = None
        self.transfer_target: str | None = None
        self.recovering_until: int | None = None
        self.losses: list[int] = []
        self.unverified = False
        self.election_elapsed = 0
        self.election_ticks = 10
        self.now = 0
        self.log = _Log()

    @property
    def is_leader(self) -> bool:
        return self.role is raft.Role.LEADER

    @property
    def recovering(self) -> bool:
        return self.recovering_until is not None


class _Host:
    broker_id = "B-AAAAA"

    def __init__(self, node: _Node) -> None:
        self.node = node
        self.signals = 0

    def signal_changed(self) -> None:
        self.signals += 1

    def address_of(self, broker_id: str) -> None:
        return None


def _change(node: _Node, rng: random.Random) -> None:
    """Nothing most of the time (as at work), else one field of the core changed."""
    node.now += 1
    node.election_elapsed += 1
    kind = rng.randrange(16)
    if kind == 0:
        node.term += 1
        node.role = rng.choice(list(raft.Role))
        node.leader_id = "B-AAAAA" if node.role is raft.Role.LEADER else None
        node.election_elapsed = 0
    elif kind == 1:
        node.leader_id = rng.choice([None, "B-BBBBB", "B-CCCCC"])
        node.election_elapsed = 0
    elif kind == 2:
        node.transfer_target = rng.choice([None, None, "B-BBBBB"])
    elif kind == 3:
        node.recovering_until = rng.choice([None, None, 30])
    elif kind == 4 and rng.random() < 0.3:
        node.losses = [*node.losses[-15:], rng.randrange(1, 40)]
    elif kind == 5:
        node.unverified = rng.random() < 0.3
    elif kind == 6:
        node.election_elapsed += 100  # (a stall: the recovering and unverified notes' clocks)
        node.now += 100


def test_note_role_says_what_its_three_notes_say_and_skips_them_when_nothing_changed(
    monkeypatch,
):
    said: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        leadership_module,
        "log_event",
        lambda level, event, **fields: said.append((level, event, sorted(fields.items()))),
    )
    for seed in range(30):
        rng = random.Random(seed)
        node = _Node()
        guarded_host, plain_host = _Host(node), _Host(node)
        guarded, plain = Leadership(guarded_host), Leadership(plain_host)  # type: ignore[arg-type]
        notes = 0
        original = guarded._note_all

        def counted(_original: Any = original) -> None:
            nonlocal notes
            notes += 1
            _original()

        guarded._note_all = counted  # type: ignore[method-assign]
        steps = 300
        for _ in range(steps):
            _change(node, rng)
            said.clear()
            guarded.note_role()
            by_guarded = list(said)
            said.clear()
            plain._note_all()  # (the three notes, each asking for itself: the rule as written)
            assert by_guarded == said, seed
            assert guarded._last_role == plain._last_role
            assert guarded.transfers == plain.transfers
            assert guarded.elections_won == plain.elections_won
            assert guarded_host.signals == plain_host.signals
        assert notes < steps, seed  # (before: each call ran the three notes)
        # A broker at work: nothing unusual, nothing changing.
        node.transfer_target = node.recovering_until = None
        node.unverified = False
        for _ in range(3):  # (a transfer's ending is told once a leader is known)
            node.leader_id = "B-BBBBB"
            guarded.note_role()
            plain._note_all()
        notes = 0
        for _ in range(50):
            guarded.note_role()
        assert notes == 0, seed


async def test_signal_changed_replaces_its_event_only_for_tasks_waiting(tmp_path):
    driver = lone_driver(tmp_path)
    event = driver._changed
    for _ in range(20):
        driver.signal_changed()
    assert driver._changed is event  # (before: a new event at every signal)
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await driver.wait_changed()
        woken.append(n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, 1)
        nursery.start_soon(waiter, 2)
        await trio.testing.wait_all_tasks_blocked()
        assert driver._changed_waiters == 2
        driver.signal_changed()
    assert sorted(woken) == [1, 2]
    assert driver._changed_waiters == 0
    with trio.move_on_after(0.01):
        await driver.wait_changed()  # (cancelled while waiting: counted out)
    assert driver._changed_waiters == 0
    event = driver._changed
    driver.signal_changed()
    assert driver._changed is event


async def test_an_acknowledgement_that_commits_nothing_asks_has_ready_once(tmp_path):
    async with open_local_cluster(tmp_path, 3) as cluster:
        leader = await cluster.wait_for_leader()
        driver = leader.driver
        node = driver.node
        with trio.fail_after(10):
            while not (driver._parked and not node.has_ready() and node.commit >= 1):  # noqa: ASYNC110 (a view, no event)
                await trio.sleep(0.01)
        peer = sorted(set(node.progress) - {node.id})[0]
        asked = 0
        original = node.has_ready

        def has_ready() -> bool:
            nonlocal asked
            asked += 1
            return original()

        node.has_ready = has_ready  # type: ignore[method-assign]
        try:
            for _ in range(10):
                commit = node.commit
                driver.step(
                    ReplicateResponse(
                        src=peer,
                        dst=node.id,
                        term=node.term,
                        cluster_version=node.cluster_version,
                        success=True,
                        match_index=node.progress[peer].match,
                    )
                )
                assert node.commit == commit
        finally:
            del node.has_ready
        assert asked == 10  # (before: 20, once in _may_apply and again to decide a wake-up)
