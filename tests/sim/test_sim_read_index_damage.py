"""A peek answered by ReadIndex (no log entry) never serves a damaged value: like the
runtime's ``_reads.query``, which counts a read that meets damage as changed, the simulator
sends such a read to the log, whose apply holds it until the value is repaired (seed 1699
of the 2,000-seed swarm: broker 1 restarted with a damaged value, led after a transfer, and
answered a peek with it)."""

import pytest

from trio_broker.testing.sim import Simulation


@pytest.mark.wire  # (the seed as the swarm runs it)
def test_a_peek_over_a_damaged_value_goes_to_the_log():
    sent_to_log = []

    class Watched(Simulation):
        def _queue(self, i, command, client):
            node = self.nodes.get(i)
            if node is not None and getattr(command, "peek", False):
                damaged = self.disks.damaged_values.get(i, set())
                if any(q == command.queue_id for q, _ in damaged):
                    sent_to_log.append((self.now, i))
            return super()._queue(i, command, client)

    r = Watched(1699).run()
    assert r.ok, r.error
    assert sent_to_log  # (the scenario: a peek on a broker holding a damaged value of its queue)
