"""A replica's apply lag judges each committed entry once (``RaftNode._apply_waits``): the
core asks whether the committed entries not yet applied may wait two or three times a Ready
(``has_ready``, ``ready``, and the runtime's ``has_ready`` after ``advance``), and each time
it asked ``apply_later`` of every one of them. The answers are kept for the entries already
judged; the Readies are the same as with the scan of every waiting entry each time."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from trio_broker._core import _raft_messages as rm
from trio_broker._core._raft import RaftNode

LEADER, REPLICA, OTHER = "B-AAAAA", "B-BBBBB", "B-CCCCC"


def _scan_every_time(node: RaftNode) -> bool:
    """The rule as it was: every waiting entry judged at each call."""
    lag = node.commit - node.applied
    if (
        lag <= 0
        or lag >= node.apply_lag
        or node._apply_due
        or node.is_leader
        or node._snapshot_to_install is not None
        or node.apply_later is None
    ):
        return False
    later = node.apply_later
    return all(later(node.log.entry(i).payload) for i in range(node.applied + 1, node.commit + 1))


def _replica(judged: Counter[Any]) -> RaftNode:
    def apply_later(payload: Any) -> bool:
        judged[payload] += 1
        return payload[0] == "lone"

    return RaftNode(
        REPLICA,
        hard_state=rm.HardState(1, None, 0),
        snapshot=rm.SnapshotMeta(0, 0, rm.Config(voters=frozenset({LEADER, REPLICA, OTHER}))),
        rng=random.Random(1),
        apply_lag=4,
        apply_later=apply_later,
    )


def _readies(node: RaftNode, seed: int, scan: bool) -> list[tuple[Any, ...]]:
    """The Readies a replica gives for a random stream of REPLICATEs (1 to 3 entries, lone
    or not, the commit index behind by 0 to 5) and heartbeats, each handled as the runtime
    does: ``has_ready``, ``ready``, ``advance``, ``has_ready`` again."""
    rng = random.Random(seed)
    if scan:
        node._apply_waits = lambda: _scan_every_time(node)  # type: ignore[method-assign]
    out: list[tuple[Any, ...]] = []
    last = 0
    for step in range(200):
        commit = max(0, last - rng.randrange(6))
        if rng.random() < 0.15:
            message: Any = rm.Heartbeat(
                src=LEADER, dst=REPLICA, term=1, cluster_version=0, commit=min(commit, last)
            )
        else:
            entries = []
            for _ in range(rng.randrange(1, 4)):
                last += 1
                kind = "lone" if rng.random() < 0.8 else "heavy"
                entries.append(rm.Entry(1, last, (kind, last)))
            first = entries[0].index
            message = rm.Replicate(
                src=LEADER,
                dst=REPLICA,
                term=1,
                cluster_version=0,
                prev_log_index=first - 1,
                prev_log_term=1 if first > 1 else 0,
                leader_commit=commit,
                entries=tuple(entries),
            )
        node.step(message)
        if step % 17 == 0:
            node.tick()
        while node.has_ready():
            rd = node.ready()
            out.append(
                (
                    step,
                    rd.hard_state,
                    tuple(e.index for e in rd.entries),
                    tuple(e.index for e in rd.committed_entries),
                )
            )
            node.advance()
    return out


def test_each_accepted_entry_is_judged_once_and_the_readies_are_those_of_a_full_scan():
    for seed in range(30):
        judged, scanned = Counter[Any](), Counter[Any]()
        readies = _readies(_replica(judged), seed, scan=False)
        assert readies == _readies(_replica(scanned), seed, scan=True), seed
        assert any(len(r[3]) > 1 for r in readies)  # (applies waited, then went together)
        accepted = {p: n for p, n in judged.items() if p[0] == "lone"}
        assert accepted, seed
        assert max(accepted.values()) == 1, (seed, accepted)
