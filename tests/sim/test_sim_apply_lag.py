"""The simulator's cores are built as the runtime builds them (``_runtime._recovery.make_node``),
with the replicas' apply lag (``APPLY_LAG``, ``applies_later``): lone appends committed on a
replica wait to be applied there, through the seed's crashes, elections and snapshots, and
the checker still finds every acknowledged append on every member (docs/performance-history.md, "One
client, one append at a time (ninth round)"). Before, the simulator's cores applied every
committed entry at once: the lag ran in no seed."""

from __future__ import annotations

from trio_broker.testing.sim import run_seed

SEARCH = range(12, 52)
"""Where the test looks for a seed on which replicas let appends wait: from seed 12 (one
group, lone appends, tens of waits: a fast seed), on to the next ones if a change of the
simulator's draws takes the waits from it, a bounded search rather than one seed."""


def test_the_simulated_replicas_let_lone_appends_wait():
    for seed in SEARCH:
        result = run_seed(seed)
        assert result.ok, f"{result.error}\n  {result.replay_command()}"
        if result.stats["applies_waiting"] > 0:
            return
    raise AssertionError(f"no seed of {SEARCH} left a replica's committed appends waiting")
