"""The request series counted when they are read, not at each write (docs/performance-history.md,
"The leader's request path without an object per APPEND"): the writes' tallies wait, bounded,
and every read (the registry, a scrape's exposition, the families the status page reads)
sees each series exactly as when each write updated them, the latency's sum to the last bit."""

from __future__ import annotations

import random
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as prometheus_values

from trio_broker._runtime import _metrics
from trio_broker._runtime._metrics import MAX_BACKLOG, BrokerMetrics, observe_many

OPERATIONS = ["APPEND", "READ", "ACK", "INVALID"]
CODES = [None, None, None, "TOO_LARGE", "QUEUE_NOT_FOUND"]


def _writes(rng: random.Random, count: int) -> list[tuple[dict, float]]:
    """Writes as the writer tallies them: a few keys each, the start of a receive shared."""
    writes = []
    now = 1000.0
    for _ in range(count):
        now += rng.random() / 100
        tally: dict = {}
        for _ in range(rng.randrange(1, 4)):
            started = now - rng.choice([0.0001, 0.0005, 0.003, 0.02, 0.4, 3.0, 9.0]) * rng.random()
            key = (rng.choice(OPERATIONS), rng.choice(CODES), started)
            tally[key] = tally.get(key, 0) + rng.randrange(1, 20)
        writes.append((tally, now))
    return writes


def _alone(writes: list[tuple[dict, float]]) -> bytes:
    """What the client library's series read when each write's answers are observed at the
    write (as before: ``observe_many`` for a key's answers, which reads as each observed on
    its own, tests/test_metrics.py), in the order written."""
    registry = CollectorRegistry()
    requests = Counter("trio_broker_requests", "x", ["operation", "status"], registry=registry)
    rejected = Counter("trio_broker_rejected_requests", "x", ["code"], registry=registry)
    latency = Histogram(
        "trio_broker_request_seconds",
        "x",
        ["operation"],
        buckets=_metrics._LATENCY_BUCKETS,
        registry=registry,
    )
    for tally, now in writes:
        for (operation, code, started), count in tally.items():
            requests.labels(operation, "error" if code else "success").inc(count)
            if code:
                rejected.labels(code).inc(count)
            observe_many(latency.labels(operation), now - started, count)
    return _series(registry)


class _Requests:
    """A registry's collectors in its order, but the state's (which reads a broker)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Any:
        for collector in list(self._registry._collector_to_names):
            if type(collector) is not _metrics._StateCollector:
                yield from collector.collect()


def _series(registry: CollectorRegistry) -> bytes:
    lines = generate_latest(_Requests(registry)).splitlines()  # type: ignore[arg-type]
    return b"\n".join(
        line for line in lines if line.startswith(b"trio_broker_re") and b"_created" not in line
    )


@pytest.mark.parametrize("writes", [1, 40, MAX_BACKLOG + 100, 3 * MAX_BACKLOG])
def test_the_series_read_as_when_each_write_updated_them(writes):
    made = _writes(random.Random(writes), writes)
    metrics = BrokerMetrics(broker=None)  # (the broker is read only when scraped)
    for tally, now in made:
        metrics.observe_batch(tally, now)
    assert len(metrics._backlog) < MAX_BACKLOG  # (bounded: counted once that many wait)
    assert _series(metrics.registry) == _alone(made)
    assert not metrics._backlog
    more = _writes(random.Random(-writes), 7)
    for tally, now in more:
        metrics.observe_batch(tally, now)
    assert _series(metrics.registry) == _alone(made + more)  # (and again after a read)


def test_a_write_takes_no_lock_of_the_client_library(monkeypatch):
    made = _writes(random.Random(5), 50)
    metrics = BrokerMetrics(broker=None)

    def locked(*args: object) -> None:
        raise AssertionError("a series updated at a write")

    with monkeypatch.context() as patched:
        patched.setattr(prometheus_values.MutexValue, "inc", locked)
        patched.setattr(prometheus_values.MutexValue, "set", locked)
        for tally, now in made:
            metrics.observe_batch(tally, now)
    assert _series(metrics.registry) == _alone(made)


def test_the_families_read_directly_count_what_waits():
    metrics = BrokerMetrics(broker=None)
    metrics.observe_batch({("APPEND", None, 1.0): 16, ("APPEND", "TOO_LARGE", 1.0): 1}, 1.001)
    totals = {
        (s.labels["operation"], s.labels["status"]): s.value
        for family in metrics.requests.collect()  # (what the status page's rates read)
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert totals == {("APPEND", "success"): 16.0, ("APPEND", "error"): 1.0}
    rejected = [s.value for f in metrics.rejected.collect() for s in f.samples]
    assert 1.0 in rejected
    counts = [
        s.value for f in metrics.latency.collect() for s in f.samples if s.name.endswith("_count")
    ]
    assert counts == [17.0]
