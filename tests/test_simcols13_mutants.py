"""The simulator drives the leader's columns path (``Proposals.add_columns``, its groups cut
by ``_pieces`` and encoded by ``_columns_runs_bytes``) and its checker catches it broken:
each test breaks one step of the path and runs a seed that, unbroken, passes
(``python -m trio_broker.testing.sim --seeds 500`` finds no failure)."""

from __future__ import annotations

from typing import Any

from trio_broker._core._append_columns import AppendColumns
from trio_broker._core._proposals import Proposals
from trio_broker._protocol import _entries
from trio_broker.testing.sim import Simulation, run_seed

CHEAP_SEED = 25
"""A seed with pipeliners that runs in a fraction of a second."""


def test_a_seed_with_pipeliners_proposes_and_commits_columns() -> None:
    sim = Simulation(CHEAP_SEED)
    assert sim.p.pipeliners and any(c.id.startswith("P-") for c in sim.clients)
    result = sim.run()
    assert result.ok, result.error
    stats = result.stats
    assert stats["columns_receives"] > 0
    assert stats["columns_appends"] >= 2 * stats["columns_receives"]
    assert 0 < stats["columns_committed"] <= stats["columns_groups"]
    assert stats["columns_acked"] > 0
    # The same seed runs the same schedule.
    assert run_seed(CHEAP_SEED).trace_hash == result.trace_hash


def test_values_swapped_in_a_group_of_columns_are_caught(monkeypatch: Any) -> None:
    written = _entries._columns_runs_bytes

    def swapped(columns: AppendColumns) -> bytes | None:
        datas = columns.datas
        if len(datas) < 2:
            return written(columns)
        datas = (datas[1], datas[0], *datas[2:])
        return written(AppendColumns(columns.queues, columns.stamps, columns.counts, datas))

    monkeypatch.setattr(_entries, "_columns_runs_bytes", swapped)
    result = run_seed(4)
    assert not result.ok
    assert result.error is not None and "changed on the wire" in result.error


def test_a_requeue_that_loses_a_piece_is_caught(monkeypatch: Any) -> None:
    proposes = Proposals._propose_pieces

    def lossy(self: Proposals[Any], propose: Any, prepare: Any) -> Any:
        try:
            return proposes(self, propose, prepare)
        except BaseException:
            # (what was not proposed is queued again, but for its first command or run)
            if self._commands:
                lost = self._commands.pop(0)
                self._columns -= type(lost) is AppendColumns
            raise

    monkeypatch.setattr(Proposals, "_propose_pieces", lossy)
    result = run_seed(17)
    assert not result.ok
    assert result.error is not None and "unexpected" in result.error


def test_the_requeue_seed_passes_unbroken() -> None:
    """(Seed 4's own run, unbroken, is one of the swarm's: ``tests/sim/test_sim.py``.)"""
    result = run_seed(17)
    assert result.ok, result.error
    assert result.stats["columns_groups"] > 0 and result.stats["columns_requeued"] > 0
