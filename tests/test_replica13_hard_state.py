"""A replica's Ready compares the core's hard state field by field with the persisted one
(``_raft_ready.hard_state_fields``) and makes a ``HardState`` only when the Ready carries one:
nearly every REPLICATE at 100 connections x 1 changes nothing in it while its apply waits
(``APPLY_LAG``: only the commit index moves, and that is not written). ``has_ready`` asks the
cheap questions first. The Readies and the answers of ``has_ready`` are those of the rules
as they were written before (a ``HardState`` made at each call and compared whole)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from trio_broker._core import _raft_messages as rm
from trio_broker._core._raft import RaftNode
from trio_broker._core._raft_types import Role

LEADER, REPLICA, OTHER = "B-AAAAA", "B-BBBBB", "B-CCCCC"

_BUT_COMMIT = (
    "term",
    "voted_for",
    "recovering_until",
    "recovering_term",
    "unverified",
    "vote_lost",
)


def _hard_state_before(node: RaftNode) -> rm.HardState | None:
    """What ``ready`` put in a Ready's ``hard_state`` before: the current hard state made
    whole, the persisted one kept when only the commit index moved while the apply waits."""
    hs = node.hard_state
    kept = node._persisted_hs
    if node._apply_waits() and all(getattr(hs, f) == getattr(kept, f) for f in _BUT_COMMIT):
        hs = kept
    return hs if hs != kept else None


def _has_ready_before(node: RaftNode) -> bool:
    if node._inflight is not None:
        return False
    hs = node._persisted_hs
    waits = node._apply_waits()
    return bool(
        node._append_pending
        or node.term != hs.term
        or node.voted_for != hs.voted_for
        or (node.commit != hs.commit and not waits)
        or (node.recovering_until or 0) != hs.recovering_until
        or (node.recovering_term if node.recovering_until else 0) != hs.recovering_term
        or (node.unverified or node.vote_floor is not None) != hs.unverified
        or (node.vote_lost and node._vote_lost_stored) != hs.vote_lost
        or node.log.has_unstable()
        or node._snapshot_to_install is not None
        or node._msgs
        or node._persisted_msgs
        or node._snapshots_to_send
        or (node.applied < node.commit and not waits)
        or (node.role is Role.LEADER and node.reads.wants_round())
    )


def _replica(max_apply: int) -> RaftNode:
    return RaftNode(
        REPLICA,
        hard_state=rm.HardState(1, None, 0),
        snapshot=rm.SnapshotMeta(0, 0, rm.Config(voters=frozenset({LEADER, REPLICA, OTHER}))),
        rng=random.Random(1),
        apply_lag=4,
        apply_later=lambda payload: payload[0] == "lone",
        max_apply=max_apply,
    )


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the ``HardState`` objects made."""
    count = [0]
    init = rm.HardState.__init__

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        count[0] += 1
        init(self, *args, **kwargs)

    monkeypatch.setattr(rm.HardState, "__init__", counted)
    return count


def test_readies_and_has_ready_as_before_and_no_hard_state_made_for_nothing(made):
    for seed in range(30):
        rng = random.Random(seed)
        node = _replica(1 + seed % 3)  # (an apply in slices: committed, written, not applied)
        term, last, carried, unchanged = 1, 0, 0, 0
        for step in range(200):
            if rng.random() < 0.03:
                term += 1  # (a new leader's term: the hard state changes)
            commit = max(0, last - rng.randrange(6))
            if rng.random() < 0.15:
                message: Any = rm.Heartbeat(
                    src=LEADER, dst=REPLICA, term=term, cluster_version=0, commit=commit
                )
            else:
                entries = []
                for _ in range(rng.randrange(1, 3)):
                    last += 1
                    kind = "lone" if rng.random() < 0.8 else "heavy"
                    entries.append(rm.Entry(term, last, (kind, last)))
                first = entries[0].index
                message = rm.Replicate(
                    src=LEADER,
                    dst=REPLICA,
                    term=term,
                    cluster_version=0,
                    prev_log_index=first - 1,
                    prev_log_term=node.log.term(first - 1) or 0 if first > 1 else 0,
                    leader_commit=commit,
                    entries=tuple(entries),
                )
            node.step(message)
            if step % 17 == 0:
                node.tick()
            for _ in range(5):
                expected = _has_ready_before(node)
                assert node.has_ready() == expected, (seed, step)
                if not expected:
                    break
                want = _hard_state_before(node)
                made[0] = 0
                rd = node.ready()
                assert rd.hard_state == want, (seed, step)
                if want is None:
                    unchanged += 1
                    assert made[0] == 0, (seed, step)  # (nothing made to compare)
                else:
                    carried += 1
                node.advance()
        assert carried and unchanged > carried, (seed, carried, unchanged)
