"""The request series counted when read (``BrokerMetrics.fold``) stay exact when the registry
is read from another thread than the broker's: the client library's series may be read from
any thread (its own HTTP server scrapes from a thread of its own), and each series update was
thread-safe when each write updated the series itself. A read from another thread counts
what waits while the broker's thread writes and counts too; no write is counted twice or
lost, the latency's sum included."""

from __future__ import annotations

import threading

from trio_broker._runtime._metrics import BrokerMetrics, _StateCollector


def _scrape(metrics: BrokerMetrics) -> None:
    """What a scrape reads of the registry, in its order (but the state's series, which
    read a broker)."""
    for collector in list(metrics.registry._collector_to_names):
        if type(collector) is not _StateCollector:
            list(collector.collect())


def test_a_read_from_another_thread_loses_no_latency():
    metrics = BrokerMetrics(broker=None)  # (the broker is read only by the state's series)
    metrics.observe_batch({("APPEND", None, 1.0): 1}, 1.5)
    series = metrics.latency.labels("APPEND")  # (counted: the series exists)
    real = series._sum
    paused = threading.Event()
    resume = threading.Event()
    reached = threading.Event()

    class PausedSum:
        """The sum's value object, pausing the other thread's fold between its read of the
        sum and its write of the sum plus what it counts."""

        def get(self) -> float:
            value = real.get()
            if threading.current_thread() is scraper and not paused.is_set():
                paused.set()
                resume.wait()
            return value

        def set(self, value: float) -> None:
            real.set(value)

        def inc(self, amount: float) -> None:
            real.inc(amount)

    series._sum = PausedSum()

    class Watched:
        """The folds' lock, where the code has one: says when the broker's fold reaches it."""

        def __init__(self, lock: object) -> None:
            self._lock = lock

        def __enter__(self) -> object:
            reached.set()
            return self._lock.__enter__()  # type: ignore[attr-defined]

        def __exit__(self, *exc: object) -> object:
            return self._lock.__exit__(*exc)  # type: ignore[attr-defined]

    if hasattr(metrics, "_folding"):
        metrics._folding = Watched(metrics._folding)

    def broker_fold() -> None:
        metrics.fold()
        reached.set()

    scraper = threading.Thread(target=_scrape, args=(metrics,))
    metrics.observe_batch({("APPEND", None, 2.0): 1}, 2.25)
    scraper.start()
    try:
        assert paused.wait(10)
        metrics.observe_batch({("APPEND", None, 3.0): 1}, 3.125)
        broker = threading.Thread(target=broker_fold)  # (the broker's thread, meanwhile)
        broker.start()
        assert reached.wait(10)
    finally:
        resume.set()
        scraper.join()
    broker.join()
    assert real.get() == 0.5 + 0.25 + 0.125
    samples = {
        s.name: s.value
        for family in metrics.latency.collect()
        for s in family.samples
        if s.name.endswith(("_count", "_sum"))
    }
    assert samples == {
        "trio_broker_request_seconds_count": 3.0,
        "trio_broker_request_seconds_sum": 0.875,
    }


def test_a_read_of_some_series_by_name_counts_what_waits():
    """``restricted_registry`` (what the client library's own HTTP handlers read for a
    scrape asking ``name[]=...``) reads only the collectors of those names: the request
    series count what waits themselves, as each write had updated them."""
    metrics = BrokerMetrics(broker=None)
    metrics.observe_batch({("APPEND", None, 1.0): 16, ("APPEND", "TOO_LARGE", 1.0): 1}, 1.001)
    names = [
        "trio_broker_requests_total",
        "trio_broker_rejected_requests_total",
        "trio_broker_request_seconds_count",
    ]
    read = metrics.registry.restricted_registry(names)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in read.collect()
        for s in family.samples
        if s.name in names
    }
    assert samples == {
        ("trio_broker_requests_total", (("operation", "APPEND"), ("status", "success"))): 16.0,
        ("trio_broker_requests_total", (("operation", "APPEND"), ("status", "error"))): 1.0,
        ("trio_broker_rejected_requests_total", (("code", "TOO_LARGE"),)): 1.0,
        ("trio_broker_request_seconds_count", (("operation", "APPEND"),)): 17.0,
    }
