"""Attempts to break an applied run of plain appends settled as numbers
(``_proposing._settle_run``, ``_pending.PendingGroup.set_appended``/``appended_frames``,
``GroupRun.appended``): stretches of one group from several entries, a refusal between
them, the results read as objects after the numbers, and over a real cluster the numbers
answered across a leader's failure against the values stored."""

from __future__ import annotations

from itertools import repeat
from typing import Any

import pytest
import trio

from trio_broker._core._appended_run import AppendedRun
from trio_broker._core._commands import MessageAppended
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._protocol import encode_frame
from trio_broker._protocol._codec import appended_frames
from trio_broker._runtime._pending import GroupRun, PendingGroup, RunAnswer, settling
from trio_broker._runtime._proposing import Proposing
from trio_broker.testing import open_local_cluster

from .test_leader12_settle import _Driver
from .wire import RawConnection, call, create_queue


def _tokens(group: PendingGroup, indexes: Any) -> list[Any]:
    return list(zip(repeat(group), indexes))


def _settle(driver: _Driver, tokens: list[Any], first: int) -> None:
    with settling():
        Proposing._settle_applied(driver, tokens, AppendedRun(first, len(tokens)))  # type: ignore[arg-type]


def test_a_refusal_between_two_entries_of_one_group_keeps_every_number_in_place() -> None:
    """A group of 6 whose index 2 was refused before it was proposed (the disk's refusal)
    and whose other appends came in two entries, the second shared with another group: each
    answer is its own entry's number, the refusal stays, and the writer's numbers-only path
    declines a stretch that holds the refusal. Would catch a stretch set across the refused
    index (``_settle_run`` trusting a stretch's ends), or numbers read past it."""
    driver = _Driver()
    group, other = PendingGroup(6), PendingGroup(2)
    refusal = BrokerError(ErrorCode.TOO_LARGE, "too large")
    group.set(2, refusal)
    _settle(driver, _tokens(group, [0, 1, 3]), 10)  # (ends (0) and (3): not one stretch)
    _settle(driver, _tokens(other, [0]) + _tokens(group, [4, 5]) + _tokens(other, [1]), 20)
    assert GroupRun(group, 0, 6).appended(100) is None  # (the refusal among them)
    assert GroupRun(group, 0, 2).appended(100) == (appended_frames([10, 11]), 2)
    answers = GroupRun(group, 2, 6).answers()
    assert answers[0].frame() is None  # (the refusal: the general path)
    assert [a.frame() for a in answers[1:]] == [appended_frames([n]) for n in (12, 21, 22)]
    assert group.results == [
        MessageAppended(10),
        MessageAppended(11),
        refusal,
        MessageAppended(12),
        MessageAppended(21),
        MessageAppended(22),
    ]
    assert other.results == [MessageAppended(20), MessageAppended(23)]
    assert driver._capacity.value == 7  # (the settled: not the refusal, never proposed)


def test_stretches_of_two_entries_are_read_as_one_run_of_numbers() -> None:
    """A group cut across two entries whose numbers are not consecutive (another group's in
    between): the writer's one take over the whole group gives each its own entry's number,
    and the objects made afterwards agree. Would catch ``appended_frames`` joining two
    stretches as if consecutive, or leaving the second out."""
    driver = _Driver()
    group, other = PendingGroup(5), PendingGroup(3)
    _settle(driver, _tokens(group, range(3)), 1)
    _settle(driver, _tokens(other, range(3)) + _tokens(group, range(3, 5)), 4)
    assert GroupRun(group, 1, 5).appended(3) == (appended_frames([2, 3, 7]), 3)
    run = GroupRun(group, 0, 5)
    assert run.appended(100) == (appended_frames([1, 2, 3, 7, 8]), 5)
    assert group.results == [MessageAppended(n) for n in (1, 2, 3, 7, 8)]
    assert [RunAnswer(other, i).frame() for i in range(3)] == [
        appended_frames([n]) for n in (4, 5, 6)
    ]


def test_an_outcome_known_already_is_never_overwritten_by_a_run() -> None:
    """A token of a stretch whose outcome is known already (settled by another path first):
    the stretch is set one by one and the known outcome kept. Would catch ``set_appended``
    overwriting an outcome or counting it twice (a group done early, its event set while an
    answer is unknown)."""
    driver = _Driver()
    group = PendingGroup(3)
    known = BrokerError(ErrorCode.NOT_LEADER, "not the leader")
    group.set(1, known)
    done: list[bool] = []
    group.when_done(lambda: done.append(True))
    _settle(driver, _tokens(group, range(3)), 40)
    assert done == [True]
    assert group.results == [MessageAppended(40), known, MessageAppended(42)]


# -- A real cluster: a leader's failure in the middle of pipelined runs ------------------------


@pytest.mark.parametrize("failure", ["stopped", "transferred"])
async def test_numbers_answered_across_a_leaders_failure_are_the_stored_ones(
    ram_path: Any, failure: str
) -> None:
    """Two producers pipeline receives of 8 plain APPENDs (four receives in flight) to the
    leader of 3 brokers, which is stopped abruptly in the middle, or hands its leadership
    over (then the runs in flight are answered partly with numbers and partly refused, on
    connections that stay open). Every APPEND answered a success must be stored, under the
    number answered, on the new leader; a connection's successes come in its order. Would
    catch answers of an applied run settled with numbers not its own (a stretch of an entry
    given to the wrong receive, shifted by the refused ones), or an acknowledgement of an
    append that the failure lost."""
    async with open_local_cluster(ram_path, 3) as cluster:
        with trio.fail_after(30):
            leader = await cluster.wait_for_leader()
            queue = await create_queue(leader.port)
            acked: dict[int, str] = {}
            order: dict[str, list[int]] = {"x": [], "y": []}
            stopping = trio.Event()
            refused: list[dict[str, Any]] = []

            async def produce(name: str) -> None:
                conn = await RawConnection.open(leader.port)
                try:
                    for step in range(60):
                        if step == 3:
                            stopping.set()
                        # Four receives of 8 in flight: the failure meets runs in progress.
                        values = [f"{name}-{step}-{index}" for index in range(32)]
                        try:
                            for at in range(0, 32, 8):
                                await conn.send_raw(
                                    b"".join(
                                        encode_frame(
                                            b'{"operation":"APPEND","queue_name":"%s","data":"%s"}'
                                            % (queue.encode(), value.encode())
                                        )
                                        for value in values[at : at + 8]
                                    )
                                )
                                await trio.lowlevel.checkpoint()
                            for value in values:
                                answer = await conn.receive()
                                if answer is None:
                                    return
                                if answer["status"] == "success":
                                    acked[answer["sequence_num"]] = value
                                    order[name].append(answer["sequence_num"])
                                else:
                                    refused.append(answer)
                            if refused and step > 4:
                                return  # (the old leader refuses: its part is over)
                        except trio.BrokenResourceError:
                            return
                finally:
                    await conn.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce, "x")
                nursery.start_soon(produce, "y")
                await stopping.wait()
                if failure == "stopped":
                    await cluster.stop(cluster.name_of(leader))
                else:
                    target = next(b for b in cluster.brokers.values() if b is not leader)
                    answer = await call(
                        leader.port,
                        {"operation": "TRANSFER_LEADERSHIP", "broker_id": target.broker_id},
                    )
                    assert answer["status"] == "success", answer
            assert acked, "nothing was answered before the failure"
            new = await cluster.wait_for_leader()
            reader = await RawConnection.open(new.port)
            stored: dict[int, Any] = {}
            for _ in range(len(acked) + 200):  # (bounded: the acked and any unanswered)
                read = await reader.call(
                    {"operation": "READ", "queue_name": queue, "client_id": "C"}
                )
                assert read["status"] == "success", read
                if read.get("sequence_num") is None:
                    break
                stored[read["sequence_num"]] = read["data"]
            await reader.aclose()
    for number, value in acked.items():
        assert stored.get(number) == value, (number, value, stored.get(number))
    if failure == "transferred":
        assert refused, "no run met the change of leader"
    for numbers in order.values():
        assert numbers == sorted(numbers)


def test_a_stretch_with_a_read_between_its_appends_is_not_taken_as_one() -> None:
    """A receive of APPEND, READ, APPEND, APPEND whose READ took the ReadIndex path (not in the
    log): the entry holds the three appends' tokens, indexes 0, 2 and 3, whose ends span four
    indexes. Each append gets its own number and the READ's outcome stays unknown until its
    own path sets it. Would catch ``_settle_run`` taking a stretch from its first token and a
    count without checking the last token's index (the READ answered as an appended message,
    the numbers after it shifted by one)."""
    driver = _Driver()
    group = PendingGroup(4)
    _settle(driver, _tokens(group, [0, 2, 3]), 30)
    assert not group.done_at(1)
    read = object()
    group.set(1, read)
    assert group.results == [MessageAppended(30), read, MessageAppended(31), MessageAppended(32)]
