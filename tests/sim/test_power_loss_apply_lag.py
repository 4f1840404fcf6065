"""The whole-cluster power-loss runner's cores are built as the runtime builds them
(``_runtime._recovery.make_node``), with the replicas' apply lag: its power cuts land while a
replica's lone appends wait to be applied and their commit index's row is left out, and
acknowledged appends still survive (docs/performance-history.md, "One client, one append at a time
(ninth round)")."""

from __future__ import annotations

from trio_broker._runtime._applied import APPLY_LAG
from trio_broker.testing._powerloss_cluster import run_seed


def test_power_cuts_land_while_a_replicas_appends_wait(apply_waits: list[int]) -> None:
    waits = apply_waits
    stats = run_seed(1, cuts=1, steps_between=120)
    assert stats.cuts == 1 and stats.acked > 20, stats
    assert waits and max(waits) < APPLY_LAG, (len(waits), max(waits, default=0))
