"""The simulator's peeks take the ReadIndex path, and its read checks catch a core that
answers them without a majority's confirmation: a leader already replaced (cut off, and
unaware: its check-quorum off, as for a stalled leader) answers from its stale state."""

from __future__ import annotations

import attrs
import pytest

from trio_broker._core._commands import Ack, AppendMessage, ReadBatch
from trio_broker.testing.sim import ClientRequest, Simulation, SimulationFailure
from trio_broker.testing.sim._lifecycle import idle_ms

SEED = 27
STEPS = 20_000


def step_until(sim: Simulation, condition, limit: int = STEPS) -> None:
    for _ in range(limit):
        if condition():
            return
        sim.step()
    raise AssertionError("the simulation did not get there")


def leader_of(sim: Simulation, among=None):
    leaders = [i for i in sim.live() if sim.nodes[i].is_leader and (among is None or i in among)]
    return max(leaders, key=lambda i: sim.nodes[i].term) if leaders else None


def issue(sim: Simulation, client, op: tuple, command, to) -> None:
    """``client`` sends ``op`` (as ``command``) to broker ``to``, as its own operation."""
    client.op = op
    client.req_id += 1
    client.deadline = sim.now + STEPS
    client.resend_at = None
    sim.post(ClientRequest(client.id, to, client.req_id, command, 0), client=True)


def stale_peek(mutant: str | None) -> Simulation:
    sim = Simulation(SEED, mutant=mutant, safety_steps=0, liveness_steps=0)
    assert not sim.workers and idle_ms(SEED) is None and len(sim.groups) == 1
    # Nothing but the clients proposes: a leader's own entries (retention's) would hold
    # its reads behind entries it cannot commit any more, hiding what this looks at.
    sim.p = attrs.evolve(sim.p, retention_every=10**9)
    sim.faults_on = False
    step_until(sim, lambda: sim.checker.created and leader_of(sim) is not None)
    client = next(c for c in sim.clients if c.id not in sim.workers)
    for c in sim.clients:
        c.next_at = 10**9  # no operation of their own from now on
    step_until(sim, lambda: all(c.op is None for c in sim.clients))
    q = sorted(sim.checker.created)[0]
    old = leader_of(sim)
    length = sim.apps[old].queue_length(q)
    if length:  # the consumer has read everything
        issue(sim, client, ("ack", q, length), Ack(client.consumer, q, length), old)
        step_until(sim, lambda: client.op is None)
    sim.nodes[old].check_quorum = False
    sim.blocked = {(a, b) for a in sim.ids for b in sim.ids if old in (a, b) and a != b}
    sim.partition_until = 10**9
    others = [i for i in sim.ids if i != old]
    step_until(sim, lambda: leader_of(sim, others) is not None)
    new = leader_of(sim, others)
    value = b'"after the change"'  # (JSON, as every stored value: it may travel encoded)
    sim.checker.on_append_sent(value)
    issue(sim, client, ("append", q, value), AppendMessage(q, value), new)
    step_until(sim, lambda: client.op is None)
    assert sim.checker.max_acked[q] == length + 1 and sim.nodes[old].is_leader
    client.read_floor = sim.checker.max_acked[q]
    issue(sim, client, ("peek", q, 2), ReadBatch(client.consumer, q, 2, peek=True), old)
    for _ in range(400):
        sim.step()
    return sim


def test_a_stale_leader_does_not_answer_a_peek_and_the_mutant_that_does_is_caught():
    sim = stale_peek(None)
    client = next(c for c in sim.clients if c.id not in sim.workers)
    assert client.op is not None and client.op[0] == "peek"  # waiting, unanswered
    assert sim.stats["read_index"] >= 1
    with pytest.raises(SimulationFailure, match="peeked nothing"):
        stale_peek("read_without_confirmation")
