"""The driver's transaction histogram: each save observed in the series of its ``durable``
label, the two series looked up once (``RaftDriver._saved``), not at every transaction (the
lookup took a lock and checked its arguments each time: about half of what counting a save
cost), and looked up again when the histogram is replaced."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from tests.lone_driver import lone_driver
from trio_broker._core._raft_ready import Ready


class _Counted:
    """A histogram that counts its ``labels`` calls and what each series observed."""

    def __init__(self) -> None:
        registry = CollectorRegistry()
        self.real = Histogram("t_seconds", "t", ["durable"], registry=registry)
        self.lookups = 0
        self.observed: Counter[str] = Counter()

    def labels(self, durable: str) -> Any:
        self.lookups += 1
        series = self.real.labels(durable)
        observed = self.observed

        class _Series:
            def observe(self, value: float) -> None:
                observed[durable] += 1
                series.observe(value)

        return _Series()


_READY = Ready(None, None, (), None, (), (), (), ())


def test_each_save_lands_in_its_series_and_the_series_are_looked_up_once(tmp_path):
    driver = lone_driver(tmp_path)
    first = _Counted()
    driver.on_transaction = first
    rng = random.Random(7)
    durables = [rng.random() < 0.5 for _ in range(50)]
    assert 0 < sum(durables) < len(durables)
    for durable in durables:
        driver._saved(_READY, (), durable=durable, took=0.001)
    assert first.observed == {"true": sum(durables), "false": len(durables) - sum(durables)}
    assert first.lookups == 2
    assert abs(first.real.labels("true")._sum.get() - sum(durables) * 0.001) < 1e-9  # type: ignore[attr-defined]
    second = _Counted()  # (replaced: its own series from then on)
    driver.on_transaction = second
    for durable in durables[:10]:
        driver._saved(_READY, (), durable=durable, took=0.002)
    assert second.observed == {"true": sum(durables[:10]), "false": 10 - sum(durables[:10])}
    assert second.lookups == 2
    assert sum(first.observed.values()) == len(durables)
    assert driver.transactions == len(durables) + 10
