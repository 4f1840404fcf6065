"""The groups' power-loss runner (``trio_broker.testing._powerloss_groups``) builds its cores as
the runtime builds them (``_runtime._recovery.make_node``), with the replicas' apply lag: its
cuts and failed fsyncs land while a replica's lone appends wait unapplied, their commit
index's row left out of its saves, and acknowledged appends still survive. Without the lag
the runner tested a schedule the runtime no longer runs."""

from __future__ import annotations

from trio_broker._runtime._applied import APPLY_LAG
from trio_broker.testing._powerloss_groups import run_seed


def test_the_groups_runner_cuts_the_power_while_a_replicas_appends_wait(
    apply_waits: list[int],
) -> None:
    waits = apply_waits
    stats = run_seed(9, cuts=1, steps_between=40)
    assert stats.cuts == 1 and stats.acked > 20, stats
    assert waits and max(waits) < APPLY_LAG, (len(waits), max(waits, default=0))
    assert stats.applies_waiting == len(waits) and stats.most_waiting == max(waits)
