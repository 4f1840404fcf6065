"""One client, one APPEND at a time (docs/performance.md, "One client, one append at a time"):
a Ready's messages are written by the driver's own task when their link is idle
(``GroupLinks.send_at_once``), not by a wake-up of the link's task; what that write does not
complete is finished by the link's task, in order. Counts of task steps, never timings."""

from __future__ import annotations

import collections
import types
from collections.abc import Callable

import trio
import trio.testing

from tests.wire import serve_one_peer
from trio_broker._core import _raft_messages as rm
from trio_broker._runtime import _direct, _peer_mux
from trio_broker._runtime._peer_mux import PeerMux
from trio_broker.testing import open_local_cluster

HOME = "G-HOME0"


class _Steps(trio.abc.Instrument):
    """Task steps counted by the task's name (its function's qualified name)."""

    def __init__(self, of: Callable[[trio.lowlevel.Task], bool] = lambda _task: True) -> None:
        self.steps: collections.Counter[str] = collections.Counter()
        self._of = of

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._of(task):
            self.steps[task.name.rsplit(".", 2)[-2] + "." + task.name.rsplit(".", 1)[-1]] += 1


def _task_self(task: trio.lowlevel.Task) -> object:
    frame = getattr(task.coro, "cr_frame", None)
    return None if frame is None else frame.f_locals.get("self")


APPENDS = 60


async def test_a_sequential_append_wakes_no_link_task_and_the_driver_twice(tmp_path):
    """Before: each REPLICATE and each acknowledgement woke its link's task (a step per message:
    about two on the leader and one on each replica per append), and the leader's driver
    yielded twice more so that those tasks wrote before its fsync (4 steps per append). Now the
    driver writes them itself: the links' tasks run only for the clock's heartbeats, and the
    leader's driver steps twice per append (the proposal, the acknowledgement that commits
    it)."""
    from tests.wire import RawConnection, create_queue

    # Heartbeats every 0.25 s: the clock's own link writes stay few beside APPENDS.
    async with open_local_cluster(tmp_path, 3, heartbeat_interval=0.25, failure_timeout=0.75) as c:
        leader = await c.wait_for_leader()
        queue_id = await create_queue(leader.port)
        connection = await RawConnection.open(leader.port)
        append = {"operation": "APPEND", "queue_name": queue_id, "data": "x" * 100}
        for _ in range(10):  # (the links connected, the replicas caught up)
            assert (await connection.call(append)).get("status") == "success"
        links = _Steps(lambda task: type(_task_self(task)) is _peer_mux._Link)
        driver = _Steps(lambda task: _task_self(task) is leader.driver)
        trio.lowlevel.add_instrument(links)
        trio.lowlevel.add_instrument(driver)
        try:
            for _ in range(APPENDS):
                assert (await connection.call(append)).get("status") == "success"
        finally:
            trio.lowlevel.remove_instrument(links)
            trio.lowlevel.remove_instrument(driver)
        await connection.aclose()
    # Before: about 4 link steps per append over the cluster (2 REPLICATEs, 2 acknowledgements).
    assert links.steps["_Link.run"] < APPENDS / 2, links.steps
    # Before: 4 per append (2 turns, and the 2 yields before the fsync).
    assert driver.steps["RaftDriver.run"] <= 2.5 * APPENDS, driver.steps


async def _with_a_peer(
    body: Callable[[_peer_mux.GroupLinks, list[rm.Message]], object],
) -> list[rm.Message]:
    """A mux with one link, over TCP on 127.0.0.1, to a peer that reads its frames with
    :func:`read_peer_stream`; ``body(links, received)`` runs once the link is idle."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    received: list[rm.Message] = []
    handshaken = trio.Event()

    with trio.fail_after(20):
        async with listener, trio.open_nursery() as nursery:
            nursery.start_soon(serve_one_peer, listener, received, handshaken)
            mux = PeerMux("B-1", HOME, nursery, ("127.0.0.1", 1), trio.open_tcp_stream, 5.0)
            links = mux.register(HOME, lambda _peer: ("127.0.0.1", port))
            links.ensure({"B-2"})
            await handshaken.wait()
            await _until(lambda: mux.statistics().links[0].connected)
            await trio.testing.wait_all_tasks_blocked()
            await body(links, received)  # type: ignore[misc]
            nursery.cancel_scope.cancel()
    return received


def _beat(commit: int) -> rm.Message:
    return rm.Heartbeat(src="B-1", dst="B-2", term=1, cluster_version=1, commit=commit)


async def _until(predicate: Callable[[], bool]) -> None:
    while True:
        if predicate():
            return
        await trio.sleep(0.005)


async def test_an_idle_link_is_written_by_the_caller():
    steps = _Steps(lambda task: type(_task_self(task)) is _peer_mux._Link)

    async def body(links: _peer_mux.GroupLinks, received: list[rm.Message]) -> None:
        trio.lowlevel.add_instrument(steps)
        try:
            for commit in range(5):
                assert links.send_at_once([_beat(2 * commit), _beat(2 * commit + 1)])
                await _until(lambda: len(received) == 2 * commit + 2)  # noqa: B023
        finally:
            trio.lowlevel.remove_instrument(steps)

    received = await _with_a_peer(body)
    assert [m.commit for m in received] == list(range(10))
    assert steps.steps["_Link.run"] == 0, steps.steps


def _os_writing(write: Callable[[int, bytes], int]) -> types.SimpleNamespace:
    return types.SimpleNamespace(write=write)


async def test_what_a_write_leaves_is_finished_by_the_links_task_in_order(monkeypatch):
    """A partial write (a full socket buffer) or one refused at once: the rest goes, before
    anything queued after it, from the link's task."""
    real_write = _peer_mux.os.write
    outcomes = collections.deque(["half", "none", "error"])

    def write(fd: int, data: bytes) -> int:
        how = outcomes.popleft() if outcomes else "all"
        if how == "half":
            return real_write(fd, bytes(data[: len(data) // 2]))
        if how == "none":
            raise BlockingIOError
        if how == "error":
            raise OSError("a transient failure the link's own send does not see")
        return real_write(fd, data)

    async def body(links: _peer_mux.GroupLinks, received: list[rm.Message]) -> None:
        monkeypatch.setattr(_peer_mux, "os", _os_writing(write))
        for commit in range(0, 12, 3):
            links.send_at_once([_beat(commit), _beat(commit + 1)])
            links.send(_beat(commit + 2))  # (queued behind the rest, for the link's task)
            await _until(lambda: len(received) == commit + 3)  # noqa: B023

    received = await _with_a_peer(body)
    assert [m.commit for m in received] == list(range(12))
    assert not outcomes


async def test_a_woken_link_is_written_by_the_caller_with_what_it_queued_first():
    """While the link's task is woken but not yet run (a heartbeat's answer queued in this
    loop turn), it has taken nothing: the caller writes what is queued and its own messages,
    in order, in one write, and the link's task finds nothing to write. Before: the caller
    wrote nothing and waited for the link's task (a replica's acknowledgement after a
    heartbeat's answer in one receive, and its driver's turn: docs/performance-history.md, "The
    REPLICATE without waiting")."""
    answers: list[bool] = []
    writes: list[int] = []

    async def body(links: _peer_mux.GroupLinks, received: list[rm.Message]) -> None:
        (link,) = links.mux._links.values()
        before = link.writes
        links.send(_beat(0))  # (wakes the link's task)
        answers.append(links.send_at_once([_beat(1), _beat(2)]))
        writes.append(link.writes - before)
        await _until(lambda: len(received) == 3)
        await trio.testing.wait_all_tasks_blocked()
        writes.append(link.writes - before)

    received = await _with_a_peer(body)
    assert answers == [True]
    assert writes == [1, 1]  # (one write, the caller's; the link's task wrote nothing)
    assert [m.commit for m in received] == [0, 1, 2]


async def test_a_link_with_a_write_left_takes_the_messages_in_its_own_task(monkeypatch):
    """While the rest of a partial write waits for the link's task, the caller writes
    nothing: its messages follow that rest, in order, from the link's task."""
    real_write = _peer_mux.os.write
    outcomes = collections.deque(["half"])
    answers: list[bool] = []

    def write(fd: int, data: bytes) -> int:
        if outcomes and outcomes.popleft() == "half":
            return real_write(fd, bytes(data[: len(data) // 2]))
        return real_write(fd, data)

    async def body(links: _peer_mux.GroupLinks, received: list[rm.Message]) -> None:
        monkeypatch.setattr(_peer_mux, "os", _os_writing(write))
        answers.append(links.send_at_once([_beat(0), _beat(1)]))
        answers.append(links.send_at_once([_beat(2)]))
        await _until(lambda: len(received) == 3)

    received = await _with_a_peer(body)
    assert answers == [False, False]
    assert [m.commit for m in received] == [0, 1, 2]


async def test_a_link_inside_its_own_write_takes_the_messages_in_its_own_task(monkeypatch):
    """While the link's task is inside a write that waits (a full socket), the caller writes
    nothing: its messages follow that write, in order, from the link's task."""
    gate = trio.Event()
    answers: list[bool] = []
    real_send_all = _direct.DirectSocket.send_all

    async def held_send_all(self: _direct.DirectSocket, data: bytes) -> None:
        await gate.wait()  # (as a socket that takes nothing until the peer reads)
        await real_send_all(self, data)

    async def body(links: _peer_mux.GroupLinks, received: list[rm.Message]) -> None:
        monkeypatch.setattr(_direct.DirectSocket, "send_all", held_send_all)
        links.send(_beat(0))  # (the link's task takes it, and waits in its write)
        await trio.testing.wait_all_tasks_blocked()
        answers.append(links.send_at_once([_beat(1), _beat(2)]))
        gate.set()
        await _until(lambda: len(received) == 3)

    received = await _with_a_peer(body)
    assert answers == [False]
    assert [m.commit for m in received] == [0, 1, 2]
