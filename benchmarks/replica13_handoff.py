"""A replica's Ready hand-off in its core alone, per REPLICATE, this tree's against another's
in one process: ``python -m benchmarks.replica13_handoff [--against TREE]``.

What ``InStep._persist_after_frames`` asks of the core for each receive of its leader's
stream, without the decode, the store or the driver: ``has_ready`` (the persist's check),
``ready``, ``advance``, then ``has_ready`` again (``_wake_if_more``), for a follower of a
3-voter group with the broker's apply lag (``APPLY_LAG``, ``applies_later``), each REPLICATE
one entry (a group of ``--appends`` appends) committing the one before, as at 100 connections
x 1. Thread CPU (``time.thread_time``) of those four calls per REPLICATE (the core's step of
the REPLICATE is made between them and not counted); the median REPLICATE.

``--against TREE``: the hand-off of another checkout's ``_core/_raft_ready.py`` (its
``has_ready`` and ``ready``, and the hard state made as that tree's ``RaftNode.hard_state``
made it), loaded into this process and swapped in every other round of ``--repeat``
REPLICATEs on the same core: on this shared machine two processes, run one after the other,
differed by up to half in this figure (whole runs slower), two versions in one process by
what they cost.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import random
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.replica12_save_path import LEADER, OTHER, REPLICA
from benchmarks.replica_cost import _frame
from trio_broker._cli._node import GC_THRESHOLDS
from trio_broker._core import _raft as raft
from trio_broker._core import _raft_messages as rm
from trio_broker._core import _raft_ready
from trio_broker._runtime._applied import APPLY_LAG, applies_later


def _hard_state_whole(node: Any) -> rm.HardState:
    """``RaftNode.hard_state`` as it was written before ``hard_state_fields``."""
    return rm.HardState(
        node.term,
        node.voted_for,
        node.commit,
        node.recovering_until or 0,
        node.recovering_term if node.recovering_until else 0,
        node.unverified or node.vote_floor is not None,
        node.vote_lost and node._vote_lost_stored,
    )


def _version(module: Any) -> tuple[Any, Any, Any]:
    fields = getattr(module, "hard_state_fields", None)
    hard_state = property(
        _hard_state_whole if fields is None else lambda n: rm.HardState(*fields(n))
    )
    return module.ReadyHandOff.has_ready, module.ReadyHandOff.ready, hard_state


def _load(tree: str) -> Any:
    """``tree``'s ``_raft_ready`` module, its imports this tree's (the same messages)."""
    path = Path(tree) / "trio_broker" / "_core" / "_raft_ready.py"
    spec = importlib.util.spec_from_file_location("trio_broker._core._raft_ready_against", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(appends: int, rounds: int, repeat: int, against: str | None) -> dict[str, float]:
    """The median REPLICATE's µs of thread CPU in the four calls, by version."""
    gc.set_threshold(*GC_THRESHOLDS)
    versions = {"this": _version(_raft_ready)}
    if against is not None:
        versions["against"] = _version(_load(against))
    names = list(versions)
    node = raft.RaftNode(
        REPLICA,
        hard_state=rm.HardState(1, None, 0),
        snapshot=rm.SnapshotMeta(0, 0, rm.Config(voters=frozenset({LEADER, REPLICA, OTHER}))),
        rng=random.Random(1),
        apply_lag=APPLY_LAG,
        apply_later=applies_later,
    )
    cpu = time.thread_time
    index = 1
    figures: dict[str, list[float]] = {name: [] for name in names}
    try:
        for round_ in range(rounds + 10):
            name = names[round_ % len(names)]
            raft.RaftNode.has_ready, raft.RaftNode.ready, raft.RaftNode.hard_state = versions[name]  # type: ignore[method-assign,assignment]
            for _ in range(repeat):
                entry = _frame(index, appends, 20, 0, True)[1]
                node.step(
                    rm.Replicate(
                        src=LEADER,
                        dst=REPLICA,
                        term=1,
                        cluster_version=1,
                        prev_log_index=index - 1,
                        prev_log_term=1 if index > 1 else 0,
                        leader_commit=index - 1,
                        entries=(entry,),
                    )
                )
                index += 1
                t0 = cpu()
                if node.has_ready():
                    node.ready()
                    node.advance()
                node.has_ready()
                if round_ >= 10:
                    figures[name].append(cpu() - t0)
    finally:
        raft.RaftNode.has_ready, raft.RaftNode.ready, raft.RaftNode.hard_state = versions["this"]  # type: ignore[method-assign,assignment]
    return {name: statistics.median(values) * 1e6 for name, values in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--against", help="another checkout, compared in this process")
    args = parser.parse_args()
    figures = run(args.appends, args.rounds, args.repeat, args.against)
    print(
        "a replica's core, has_ready + ready + advance + has_ready per REPLICATE of"
        f" {args.appends} appends, µs of thread CPU (the median REPLICATE):"
    )
    for name, figure in figures.items():
        print(f"  {name:<8} {figure:6.2f}")


if __name__ == "__main__":
    main()
