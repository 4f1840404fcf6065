"""The simulator's lifecycle workload and the invariants it adds: named queues, deletion,
headers, forgetting positions (explicitly and when idle), and retention that never deletes
what a group has not finished. It runs clean on the real core, exercises every operation,
and catches broken rules."""

import attrs
import pytest

from trio_broker._core import _queues, _work
from trio_broker.testing.sim import run_swarm
from trio_broker.testing.sim._lifecycle import idle_ms, lifecycle_clients
from trio_broker.testing.sim._params import FaultParams
from trio_broker.testing.sim._workers import work_queue_retention

MUTANT_SEEDS = 300


def lifecycle_seeds(n):
    return [s for s in range(1000) if lifecycle_clients(s)][:n]


def mutant_seeds():
    """The first ``MUTANT_SEEDS`` seeds, those with lifecycle clients first (the rules most
    mutants break are theirs): the same seeds as in order, a mutant's first failure found
    after fewer runs of seeds that cannot catch it."""
    return sorted(range(MUTANT_SEEDS), key=lambda s: not lifecycle_clients(s))


def test_lifecycle_workload_runs_clean_and_exercises_every_path():
    results = run_swarm(lifecycle_seeds(30), jobs=2)
    failures = [r for r in results if not r.ok]
    assert not failures, "\n".join(f"{r.error}\n  {r.replay_command()}" for r in failures)
    total = {}
    for r in results:
        for k, v in r.stats.items():
            total[k] = total.get(k, 0) + v
    for key in (
        "life_ncreate",
        "life_ndelete",
        "life_npublish",
        "life_nread",
        "life_nforget",
        "life_njoin",
        "life_ngread",
        "idle_sweeps",
        "idle_forgotten",
    ):
        assert total.get(key, 0) > 0, (key, total)


def test_retention_with_groups_runs_clean_and_deletes():
    seeds = [
        s
        for s in range(1000)
        if FaultParams.derive(s, 1, 1).groups and work_queue_retention(s) is not None
    ][:20]
    results = run_swarm(seeds, jobs=2)
    failures = [r for r in results if not r.ok]
    assert not failures, "\n".join(f"{r.error}\n  {r.replay_command()}" for r in failures)
    assert sum(r.stats["retention_deleted"] for r in results) > 0


def test_seeds_draw_lifecycle_clients_and_idle_times_independently():
    assert {len(lifecycle_clients(s)) for s in range(100)} == {0, 1, 2}
    assert {idle_ms(s) for s in range(100)} == {None, 500, 2000}


# -- broken rules the invariants catch (patched in this process only) -------------------------

_through, _delete, _append, _forget_idle = (
    _queues.retention_through,
    _work._delete_queue,
    _work._append_records,
    _work._forget_idle,
)
_apply_work = _work.apply_work


def retention_ignores_groups(policy, deleted, length, too_old, slowest, budget, unfinished=None):
    return _through(policy, deleted, length, too_old, slowest, budget)


def retention_ignores_readers(policy, deleted, length, too_old, slowest, budget, unfinished=None):
    """delete_acknowledged keeps what the readers and groups are done with."""
    return _through(
        attrs.evolve(policy, delete_acknowledged=False),
        deleted,
        length,
        too_old,
        None,
        budget,
        unfinished,
    )


def delete_ignores_leases(state, command):
    """A delete without force goes ahead while a group holds unexpired leases."""
    return _delete(state, attrs.evolve(command, force=True))


def delete_keeps_positions(state, command):
    kept = {k: p for k, p in state.positions.items() if k[1] == command.queue_id}
    result = _delete(state, command)
    state.positions.update(kept)
    return result


def headers_dropped(state, queue_id, records, stamp_ms):
    """Published headers are lost (a dead letter's are kept: the group checker sees those)."""
    if queue_id == "Q-SIMDL":
        return _append(state, queue_id, records, stamp_ms)
    return _append(state, queue_id, [(d, ()) for d, _ in records], stamp_ms)


def forgets_early(state, command):
    return _forget_idle(state, attrs.evolve(command, idle_ms=max(1, command.idle_ms // 3)))


def names_not_idempotent(state, command):
    """A repeated create with a name makes a new queue under it."""
    if type(command).__name__ == "CreateNamedQueue" and command.name in state.work.names:
        del state.work.names[command.name]
    return _apply_work(state, command)


def forget_keeps_position(state, command):
    if type(command).__name__ == "ForgetPosition":
        key = (command.client_id, command.queue_id)
        kept = state.positions.get(key)
        result = _apply_work(state, command)
        if kept is not None:
            state.positions[key] = kept
        return result
    return _apply_work(state, command)


@pytest.mark.parametrize(
    ("module", "name", "mutant", "expected"),
    [
        (_queues, "retention_through", retention_ignores_groups, "has not finished"),
        (_queues, "retention_through", retention_ignores_readers, "although every reader"),
        (_work, "_delete_queue", delete_keeps_positions, "is still in"),
        (_work, "_delete_queue", delete_ignores_leases, "leases until"),
        (_work, "_append_records", headers_dropped, "stored"),
        (_work, "_forget_idle", forgets_early, "forgot"),
        (_queues, "apply_work", names_not_idempotent, "names Q-"),
        (_queues, "apply_work", forget_keeps_position, "forgotten, but its position"),
    ],
)
def test_a_broken_lifecycle_rule_is_caught(monkeypatch, module, name, mutant, expected):
    monkeypatch.setattr(module, name, mutant)
    results = run_swarm(mutant_seeds(), jobs=1, stop_on_failure=True)
    failures = [r for r in results if not r.ok]
    assert failures, f"{mutant.__name__} survived {MUTANT_SEEDS} seeds"
    assert expected in failures[0].error, failures[0].error
