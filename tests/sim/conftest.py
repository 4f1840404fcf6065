"""The simulator's tests run without the wire (``trio_broker/testing/sim/_wire.py``) unless
marked ``wire``: a seed runs the same schedule with its messages encoded as without (with
the links as connections in both, which come with the wire), so what the other tests check
does not depend on it, and it costs
a seed about 40% more CPU. The swarm of seeds, the command line's replay and
``test_sim_wire.py`` run each seed's own choice (the wire on 3 seeds in 4), as
``python -m trio_broker.testing.sim`` does."""

from __future__ import annotations

import pytest

from trio_broker.testing.sim import _params


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "wire: run each seed's own choice of the simulator's wire")


@pytest.fixture(autouse=True)
def _wire_only_where_marked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if request.node.get_closest_marker("wire") is None:
        monkeypatch.setattr(_params, "WIRE_SHARE", 0.0)
