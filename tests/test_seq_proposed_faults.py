"""The proposing task's Ready (``InStep._proposed``) when something fails after the task took
it from the core, or its client goes away meanwhile: whatever fails there (encoding an entry,
handing the REPLICATEs to the links) must reach the driver's task as its own failure would,
never escape into the proposing task with the Ready taken and neither advanced nor handed over
(the core then gives no other Ready: every later proposal of the group waits forever); a
client gone during the fsync leaves its entry whole (persisted, advanced, applied once); and a
run larger than a leader's Ready may fsync on the loop's thread with its REPLICATEs
(``SENDING_COMMANDS``) stays with the driver's task, which persists it on the storage thread
as before. Outcomes, states and threads, never timings."""

from __future__ import annotations

import socket
import struct
import threading

import trio

from tests.test_seq_links import _until
from tests.test_seq_turns import same_queue_lengths
from tests.wire import RawConnection, call, create_queue
from trio_broker._core._commands import CommandGroup
from trio_broker._runtime._save_place import SENDING_COMMANDS
from trio_broker.testing import open_local_cluster


async def _lone_appends(tmp_path, body, *, close: bool = True) -> None:
    """A three-broker cluster, a queue and a connection to its leader that appended five
    times one at a time (the proposing task takes each one's Ready from then on); then
    ``body(cluster, leader, connection, append)``."""
    async with open_local_cluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        queue_id = await create_queue(leader.port)
        connection = await RawConnection.open(leader.port)
        append = {"operation": "APPEND", "queue_name": queue_id, "data": "x" * 100}
        for _ in range(5):
            assert (await connection.call(append)).get("status") == "success"
        await body(c, leader, connection, append)
        if close:
            await connection.aclose()


async def test_a_failure_after_the_proposing_task_took_its_ready_reaches_the_driver(tmp_path):
    """The first hand-over of the REPLICATEs to the links raises (as a bug in their encoding
    would). Before the fix: the exception ended the connection's task, and the Ready stayed
    taken by nobody (the core outstanding, the driver parked, nothing handed over): the next
    APPEND, on any connection, was never answered. Now the driver's task fails and recovers
    (as when its own path raises): the APPEND is answered "outcome unknown", the next one
    succeeds, and every broker holds the same queue."""
    seen: list[tuple[bool, bool, bool, bool]] = []
    answers: list[dict] = []

    async def body(cluster, leader, connection, append) -> None:
        driver = leader.driver
        before = driver.proposed_in_step
        real = driver._send_at_once
        raised = trio.Event()

        def failing_send_at_once(messages):
            if not raised.is_set():
                raised.set()
                raise RuntimeError("injected: the REPLICATE could not be encoded")
            return real(messages)

        driver._send_at_once = failing_send_at_once
        try:
            await connection.send(append)
            # Wait until the proposing task took the Ready and met the failure.
            await raised.wait()
            node = driver.node
            seen.append(
                (
                    driver.proposed_in_step > before,
                    node._inflight is not None,  # (a Ready outstanding in the core)
                    driver._taken is None and driver._failed is None,  # (not handed over)
                    driver._parked and not driver._wake.is_set(),  # (the driver not woken)
                )
            )
            # Wedged (fails at once, not after the guard below): the Ready outstanding in the
            # core, neither handed over nor failed to the driver, and the driver asleep.
            assert not all(seen[0][1:]), seen
            answer = await connection.receive()
            answers.append(answer if answer is not None else {"closed": True})
        finally:
            del driver._send_at_once
        # The group goes on taking writes (the rebuilt core starts as a follower: on whichever
        # broker leads next).
        with trio.fail_after(10):  # (a guard against the hang, not a timing)
            while True:
                now_leading = await cluster.wait_for_leader()
                answer = await call(now_leading.port, append)
                if answer.get("code") != "NOT_LEADER":
                    break
                await trio.sleep(0.01)
        answers.append(answer)
        await same_queue_lengths(cluster)

    await _lone_appends(tmp_path, body)
    ((took, *_),) = seen
    assert took
    assert answers[0].get("outcome") == "unknown", answers[0]
    assert answers[1].get("status") == "success", answers[1]


async def test_a_run_of_many_after_a_lone_append_fsyncs_on_the_storage_thread(tmp_path):
    """After a lone append, one receive brings a run of 12 APPENDs (nothing else in flight):
    a leader's Ready that sends its REPLICATEs before it persists runs its fsync on the loop's
    thread only with at most ``SENDING_COMMANDS`` commands (under load the loop serves the
    connections meanwhile). Before the fix the proposing task took the run's Ready, sent its
    REPLICATEs and handed it over without them, and the driver, seeing no messages, ran the
    fsync of 12 commands on the loop's thread (the bound for a Ready that sends nothing,
    ``SHORT_COMMANDS``)."""
    run = 12
    assert run > SENDING_COMMANDS
    on_loop: list[bool] = []

    async def body(cluster, leader, connection, append) -> None:
        driver = leader.driver
        store = driver._store
        save = store.save

        def watching_save(**kwargs):
            entries = kwargs.get("entries") or ()
            commands = sum(
                len(e.payload.commands) if isinstance(e.payload, CommandGroup) else 1
                for e in entries
            )
            if commands > SENDING_COMMANDS and driver.node.is_leader:
                on_loop.append(threading.current_thread() is threading.main_thread())
            return save(**kwargs)

        store.save = watching_save
        try:
            for _ in range(5):
                assert (await connection.call(append)).get("status") == "success"
                await connection.send(*[append] * run)
                for _ in range(run):
                    answer = await connection.receive()
                    assert answer is not None and answer.get("status") == "success", answer
        finally:
            del store.save
        await same_queue_lengths(cluster)

    await _lone_appends(tmp_path, body)
    assert on_loop, "no Ready of the runs reached a save"
    assert not any(on_loop), on_loop


async def test_a_client_gone_during_the_proposing_tasks_fsync_leaves_its_entry_whole(tmp_path):
    """The client's connection is reset while the proposing task runs its entry's fsync (the
    task's step holds no await from the proposal to ``advance()``: nothing can cancel it
    halfway). The entry is persisted, advanced, replicated and applied once on every broker,
    its proposal settled (nobody left waiting in the ledger), and the group takes the next
    write."""
    states: list[tuple[bool, int]] = []

    async def body(cluster, leader, connection, append) -> None:
        driver = leader.driver
        store = driver._store
        save = store.save
        client = connection.stream.socket
        before = driver.proposed_in_step

        def resetting_save(**kwargs):
            if kwargs.keys() == {"hard_state", "entries", "committed"} and kwargs["entries"]:
                # (the proposing task's save: the client goes away in the middle of it)
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                trio.lowlevel.notify_closing(client)
                client.close()
            return save(**kwargs)

        store.save = resetting_save
        try:
            await connection.send(append)
            await _until(lambda: client.fileno() == -1)
        finally:
            del store.save
        states.append((driver.node._inflight is None, driver.proposed_in_step - before))
        with trio.fail_after(10):  # (a guard against a hang, not a timing)
            await _until(lambda: not len(driver._ledger))  # (applied on the leader)
        lengths = await same_queue_lengths(cluster)
        other = await RawConnection.open(leader.port)
        assert (await other.call(append)).get("status") == "success"
        await other.aclose()
        states.append((True, next(iter(lengths.values()))))

    await _lone_appends(tmp_path, body, close=False)
    assert states[0] == (True, 1), states
    assert states[1][1] == 5 + 1, states
