"""The proposals ledger: grouping, (index, term) waiters, and how each request is settled."""

from __future__ import annotations

import random

import pytest

from trio_broker._core._commands import (
    AppendMessage,
    CommandGroup,
    CreateQueue,
    GroupApplied,
    MessageAppended,
)
from trio_broker._core._proposals import (
    MAX_GROUP,
    NotApplied,
    Proposals,
    encoded_bound,
)
from trio_broker._core._raft import LeadershipTransferring, NotLeader, RaftNode
from trio_broker._core._raft_messages import Config, HardState, SnapshotMeta

Q = "Q-AAAAA00001"


def append(n: int, size: int = 8) -> AppendMessage:
    return AppendMessage(Q, b'"' + b"x" * size + b'"', None, n, 0)


class Log:
    """Stands in for RaftNode.propose: appends at the next index in ``term``."""

    def __init__(self, term: int = 1, last: int = 0) -> None:
        self.term, self.last = term, last
        self.payloads: list[object] = []

    def propose(self, payload: object) -> tuple[int, int]:
        self.last += 1
        self.payloads.append(payload)
        return self.term, self.last


def test_requests_queued_between_readys_become_one_group_entry():
    ledger: Proposals[str] = Proposals()
    for n, token in enumerate("abc"):
        ledger.add(append(n), token)
    assert ledger.queued == 3 and len(ledger) == 3
    log = Log(term=4, last=9)
    assert ledger.propose_queued(log.propose) == []
    assert log.payloads == [CommandGroup((append(0), append(1), append(2)))]
    assert ledger.queued == 0 and len(ledger) == 3
    assert ledger.waiting(10) == (4, ["a", "b", "c"])
    assert ledger.grouped == 1


def test_a_single_request_is_proposed_as_its_command_not_as_a_group():
    ledger: Proposals[str] = Proposals()
    ledger.add(CreateQueue(Q), "a")
    log = Log()
    ledger.propose_queued(log.propose)
    assert log.payloads == [CreateQueue(Q)]
    assert ledger.grouped == 0


def test_groups_are_cut_at_max_group_commands_in_arrival_order():
    ledger: Proposals[int] = Proposals(max_group=4)
    for n in range(10):
        ledger.add(append(n), n)
    log = Log()
    ledger.propose_queued(log.propose)
    assert [len(p.commands) if isinstance(p, CommandGroup) else 1 for p in log.payloads] == [
        4,
        4,
        2,
    ]
    assert [ledger.waiting(i)[1] for i in (1, 2, 3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_groups_stay_under_max_bytes_by_the_encoded_bound_but_hold_at_least_one_command():
    big = append(0, size=5000)
    bound = encoded_bound(big)
    ledger: Proposals[int] = Proposals(max_bytes=2 * bound + 1)
    for n in range(5):
        ledger.add(append(n, size=5000), n)
    ledger.add(append(9, size=50_000), 9)  # alone over the bound: still proposed, alone
    log = Log()
    ledger.propose_queued(log.propose)
    sizes = [len(p.commands) if isinstance(p, CommandGroup) else 1 for p in log.payloads]
    assert sizes == [2, 2, 1, 1]
    assert ledger.waiting(4) == (1, [9])


def test_the_default_group_bound_is_the_drivers():
    assert Proposals().max_group == MAX_GROUP == 1024
    with pytest.raises(ValueError, match="max_group"):
        Proposals(max_group=0)


def test_a_group_cannot_be_added_from_outside():
    ledger: Proposals[str] = Proposals()
    with pytest.raises(ValueError, match="groups are made by the ledger"):
        ledger.add(CommandGroup((CreateQueue(Q),)), "a")
    assert len(ledger) == 0


def test_each_request_of_an_applied_group_gets_its_own_result_in_order():
    ledger: Proposals[str] = Proposals()
    for n, token in enumerate("ab"):
        ledger.add(append(n), token)
    ledger.propose_queued(Log(term=2, last=6).propose)
    results = GroupApplied((MessageAppended(0), MessageAppended(1)))
    assert ledger.applied(7, 2, results) == [
        ("a", MessageAppended(0)),
        ("b", MessageAppended(1)),
    ]
    assert len(ledger) == 0 and ledger.waiting(7) is None
    assert ledger.applied(7, 2, results) == []  # settled once


def test_a_result_that_is_not_a_group_answers_every_request_of_the_entry():
    ledger: Proposals[str] = Proposals()
    ledger.wait_for(3, 1, ["a"])
    assert ledger.applied(3, 1, "refused") == [("a", "refused")]


def test_an_entry_of_another_term_applied_at_the_index_means_not_applied():
    """Raft's Figure 8: a proposal whose entry another leader's replaced is known to have
    failed only once this broker applies that index with another term."""
    ledger: Proposals[str] = Proposals()
    ledger.wait_for(5, 2, ["a", "b"])
    settled = ledger.applied(5, 3, GroupApplied((MessageAppended(0),)))
    assert [token for token, _ in settled] == ["a", "b"]
    assert all(isinstance(outcome, NotApplied) for _, outcome in settled)
    assert "another leader's entry was committed" in settled[0][1].reason
    assert len(ledger) == 0


def test_a_later_terms_entry_at_the_same_index_settles_the_earlier_waiters_not_applied():
    ledger: Proposals[str] = Proposals()
    assert ledger.wait_for(9, 5, ["old1", "old2"]) == []
    settled = ledger.wait_for(9, 7, ["new"])
    assert [token for token, _ in settled] == ["old1", "old2"]
    assert settled[0][1] == NotApplied("another leader's entry took its place")
    assert ledger.waiting(9) == (7, ["new"])
    assert len(ledger) == 1


def test_refused_proposals_are_settled_with_the_cores_refusal_and_leave_the_ledger():
    ledger: Proposals[str] = Proposals(max_group=1)
    for n, token in enumerate("ab"):
        ledger.add(append(n), token)

    def transferring(payload: object) -> tuple[int, int]:
        raise LeadershipTransferring("B-BBBBB")

    settled = ledger.propose_queued(transferring)
    assert [token for token, _ in settled] == ["a", "b"]
    assert all(isinstance(o, LeadershipTransferring) for _, o in settled)
    assert settled[0][1].leader_id == "B-BBBBB"
    assert len(ledger) == 0


def test_a_broker_that_lost_its_leadership_refuses_what_it_queued_as_leader():
    """The queue is flushed through the real core: once deposed, nothing is appended."""
    node = RaftNode(
        "B-AAAAA",
        hard_state=HardState(0, None, 0),
        snapshot=SnapshotMeta(0, 0, Config(voters=frozenset({"B-AAAAA", "B-BBBBB"}))),
        rng=random.Random(1),
    )
    ledger: Proposals[str] = Proposals()
    ledger.add(CreateQueue(Q), "a")
    settled = ledger.propose_queued(node.propose)
    assert len(settled) == 1 and isinstance(settled[0][1], NotLeader)
    assert node.log.last_index == 0 and len(ledger) == 0


def test_prepare_maps_each_command_at_proposal_time():
    ledger: Proposals[str] = Proposals()
    ledger.add(append(0), "a")
    ledger.add(append(1), "b")
    log = Log()
    ledger.propose_queued(log.propose, lambda c: AppendMessage(Q, c.data, None, c.producer_seq, 99))
    assert [c.appended_ms for c in log.payloads[0].commands] == [99, 99]


def test_a_snapshot_takes_the_waiters_it_replaced_and_only_those():
    ledger: Proposals[str] = Proposals()
    for index, token in ((3, "a"), (4, "b"), (6, "c")):
        ledger.wait_for(index, 1, [token])
    assert sorted(ledger.take_through(4)) == ["a", "b"]
    assert ledger.waiting(6) == (1, ["c"]) and len(ledger) == 1


def test_take_all_empties_the_ledger_queued_first():
    ledger: Proposals[str] = Proposals()
    ledger.wait_for(2, 1, ["w"])
    ledger.add(CreateQueue(Q), "q")
    assert ledger.take_all() == ["q", "w"]
    assert len(ledger) == 0 and ledger.queued == 0 and ledger.waiting(2) is None


def test_take_queued_leaves_the_waiting_tokens():
    ledger: Proposals[str] = Proposals()
    ledger.wait_for(2, 1, ["w"])
    ledger.add(CreateQueue(Q), "q")
    assert ledger.take_queued() == ["q"]
    assert ledger.queued == 0 and ledger.waiting(2) == (1, ["w"]) and len(ledger) == 1


def test_add_many_queues_each_command_with_its_token_in_order():
    ledger: Proposals[str] = Proposals()
    ledger.add("a", "1")
    ledger.add_many(["b", "c"], ["2", "3"])
    assert ledger.take_queued() == ["1", "2", "3"]
    for commands, tokens in ((["b"], ["2", "3"]), ([CommandGroup(("x",))], ["1"])):
        with pytest.raises(ValueError):
            ledger.add_many(commands, tokens)
    assert ledger.queued == 0


def test_a_proposal_that_fails_unexpectedly_leaves_the_requests_not_proposed_for_take_all():
    """Anything but the core's refusals raised while proposing (a bug in a command, a
    cancellation) must not drop the requests not yet proposed: they stay queued, in order,
    ahead of newer ones, so that the driver's recovery (take_all) answers every one."""
    ledger: Proposals[int] = Proposals(max_group=4)
    for n in range(10):
        ledger.add(append(n), n)
    log = Log()
    calls = 0

    def propose(payload: object) -> tuple[int, int]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the second group fails")
        return log.propose(payload)

    with pytest.raises(RuntimeError, match="second group"):
        ledger.propose_queued(propose)
    assert ledger.waiting(1) == (1, [0, 1, 2, 3])
    assert ledger.queued == 6
    ledger.add(append(10), 10)
    assert ledger.take_all() == [4, 5, 6, 7, 8, 9, 10, 0, 1, 2, 3]
