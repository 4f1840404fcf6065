"""The request series counted by columns (``BrokerMetrics._count``: writes of one operation and
outcome, as at one request in flight, counted without a line of Python per write) read exactly
as the code before counted them, one write at a time: counts, buckets and the latency's sum to
the last bit, over seeded writes of every shape a writer makes and some it never does (a
latency not a number, infinities, a latency on a bucket's bound, an empty tally). The code
before is frozen here (``_count_before``); each case also says which way it was counted, so
that the column way is the one held to it where it applies."""

from __future__ import annotations

import bisect
import math
import random
from typing import Any

import pytest
from prometheus_client import generate_latest

from trio_broker._runtime import _metrics
from trio_broker._runtime._metrics import MAX_BACKLOG, BrokerMetrics

OPERATIONS = ["APPEND", "READ", "ACK"]
CODES = [None, "TOO_LARGE"]
_BOUNDS = [*map(float, _metrics._LATENCY_BUCKETS), float("inf")]
Writes = list[tuple[dict[tuple[str, Any, float], int], float]]


def _count_before(metrics: BrokerMetrics, writes: Writes) -> None:
    """``BrokerMetrics._count`` as it was before it counted by columns (5e8e1d9)."""
    cells: dict[tuple[str, Any, int], int] = {}
    sums: dict[str, list[float]] = {}
    for tally, now in writes:
        for (operation, code, started), count in tally.items():
            amount = now - started
            cell = (operation, code, bisect.bisect_left(_BOUNDS, amount))
            cells[cell] = cells.get(cell, 0) + count
            added = sums.get(operation)
            if added is None:
                added = sums[operation] = []
            added.append(amount * count)
    counts: dict[tuple[str, Any], int] = {}
    buckets: dict[tuple[str, int], int] = {}
    for (operation, code, index), count in cells.items():
        key, bucket = (operation, code), (operation, index)
        counts[key] = counts.get(key, 0) + count
        buckets[bucket] = buckets.get(bucket, 0) + count
    for (operation, code), count in counts.items():
        requests, rejected, _ = metrics._series_of(operation, code)
        requests.inc(count)
        if rejected is not None:
            rejected.inc(count)
    for (operation, index), count in buckets.items():
        metrics._latency_of(operation)._buckets[index].inc(count)
    for operation, amounts in sums.items():
        total = metrics._latency_of(operation)._sum
        value = total.get()
        for amount in amounts:
            value += amount
        total.set(value)


def _series(metrics: BrokerMetrics) -> list[tuple[str, dict[str, str], float]]:
    """Every request series' samples, in the exposition's order (the values as floats, so
    that a sum differing in its last bit differs here; a NaN as its text)."""
    out = []
    for name in ("_requests", "_rejected", "_latency"):
        for family in getattr(metrics, name).collect():
            for sample in family.samples:
                if not sample.name.endswith("_created"):
                    value = sample.value
                    out.append((sample.name, sample.labels, "nan" if value != value else value))
    return out


def _latency(rng: random.Random) -> float:
    return rng.choice(
        [
            rng.uniform(0.0, 0.003),
            rng.uniform(0.0, 30.0),
            rng.choice(_metrics._LATENCY_BUCKETS),  # (on a bound: in that bound's bucket)
            -rng.random() / 1000,  # (a clock that went back)
        ]
    )


def _writes(
    rng: random.Random,
    count: int,
    *,
    operations: list[str],
    codes: list[Any],
    keys: int,
    answers: int,
) -> Writes:
    writes = []
    now = 1000.0
    for _ in range(count):
        now += rng.random() / 100
        tally: dict[tuple[str, Any, float], int] = {}
        for _ in range(rng.randrange(1, keys + 1)):
            key = (rng.choice(operations), rng.choice(codes), now - _latency(rng))
            more = -answers if answers < 0 else rng.randrange(1, answers + 1)
            tally[key] = tally.get(key, 0) + more
        writes.append((tally, now))
    return writes


SHAPES = {
    # (operations, codes, keys a write, answers a key: up to so many, or exactly minus so
    # many), and which way their folds of
    # several writes are counted
    "one in flight": ((["APPEND"], [None], 1, 1), "columns"),
    "one in flight, refused": ((["APPEND"], ["TOO_LARGE"], 1, 1), "columns"),
    "pipelined receives": ((["APPEND"], [None], 1, 16), "columns"),
    "receives of 16": ((["APPEND"], [None], 1, -16), "columns"),
    "several receives a write": ((["APPEND"], [None], 3, 16), "columns"),
    "several operations": ((OPERATIONS, [None], 1, 1), "each"),
    "several outcomes": ((["APPEND"], CODES, 2, 4), "each"),
    "all mixed": ((OPERATIONS, CODES, 3, 5), "each"),
}


def _fold(writes: Writes, monkeypatch: pytest.MonkeyPatch) -> tuple[BrokerMetrics, list[str]]:
    """``writes`` observed and read on a broker's metrics, and which way each fold counted."""
    ways: list[str] = []
    alike, each = BrokerMetrics._count_alike, BrokerMetrics._count_each

    def count_alike(self: BrokerMetrics, *args: Any) -> bool:
        counted = alike(self, *args)
        if counted:
            ways.append("columns")
        return counted

    def count_each(self: BrokerMetrics, writes: Writes) -> None:
        ways.append("each")
        each(self, writes)

    monkeypatch.setattr(BrokerMetrics, "_count_alike", count_alike)
    monkeypatch.setattr(BrokerMetrics, "_count_each", count_each)
    metrics = BrokerMetrics(broker=None)  # type: ignore[arg-type]  (read only when scraped)
    for tally, now in writes:
        metrics.observe_batch(tally, now)
    metrics.fold()
    monkeypatch.undo()
    return metrics, ways


def _before(writes: Writes) -> BrokerMetrics:
    metrics = BrokerMetrics(broker=None)  # type: ignore[arg-type]
    for start in range(0, len(writes), MAX_BACKLOG):
        _count_before(metrics, writes[start : start + MAX_BACKLOG])  # (as the folds take them)
    return metrics


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("seed", range(6))
def test_the_series_read_as_the_code_before_counted_them(shape, seed, monkeypatch):
    (operations, codes, keys, answers), way = SHAPES[shape]
    rng = random.Random(f"{shape} {seed}")
    writes = _writes(
        rng,
        rng.choice([1, 2, 7, MAX_BACKLOG - 1, MAX_BACKLOG, 2 * MAX_BACKLOG + 3]),
        operations=operations,
        codes=codes,
        keys=keys,
        answers=answers,
    )
    metrics, ways = _fold(writes, monkeypatch)
    assert _series(metrics) == _series(_before(writes))
    folds = [writes[start : start + MAX_BACKLOG] for start in range(0, len(writes), MAX_BACKLOG)]
    alike = [len({key[:2] for tally, _ in fold for key in tally}) == 1 for fold in folds]
    assert ways == ["columns" if one else "each" for one in alike]
    if len(writes) > 2:
        assert way in ways  # (the shape's way, at least in its larger folds)


@pytest.mark.parametrize(
    "odd",
    [
        math.nan,  # (a latency not a number: no sorted place; bucket 0 as before)
        math.inf,  # (the last bucket)
        -math.inf,
    ],
)
def test_latencies_that_are_not_finite_count_as_before(odd, monkeypatch):
    rng = random.Random(3)
    writes = _writes(rng, 40, operations=["APPEND"], codes=[None], keys=1, answers=1)
    tally, now = writes[17]
    ((operation, code, _),) = tally
    writes[17] = ({(operation, code, now - odd): 1}, now)
    metrics, _ = _fold(writes, monkeypatch)
    assert _series(metrics) == _series(_before(writes))


def test_one_write_unlike_the_few_read_first_counts_as_before(monkeypatch):
    """Writes of one operation but for one the sample of a fold does not read: the columns
    find it, and every write is counted one at a time."""
    rng = random.Random(4)
    writes = _writes(rng, 300, operations=["APPEND"], codes=[None], keys=1, answers=1)
    tally, now = writes[151]
    ((_, code, started),) = tally
    writes[151] = ({("READ", code, started): 1}, now)
    metrics, ways = _fold(writes, monkeypatch)
    assert _series(metrics) == _series(_before(writes))
    assert ways == ["each"]


def test_an_empty_tally_among_writes_counts_as_before(monkeypatch):
    rng = random.Random(5)
    writes = _writes(rng, 30, operations=["APPEND"], codes=[None], keys=2, answers=3)
    writes[4] = ({}, writes[4][1])
    metrics, _ = _fold(writes, monkeypatch)
    assert _series(metrics) == _series(_before(writes))


def test_the_exposition_reads_as_before(monkeypatch):
    """What a scrape serves, byte for byte (the order of the series, their text)."""
    rng = random.Random(6)
    writes = _writes(rng, 700, operations=["APPEND"], codes=["TOO_LARGE"], keys=1, answers=1)
    metrics, ways = _fold(writes, monkeypatch)
    assert "columns" in ways
    before = _before(writes)
    text = [
        [
            line
            for line in (generate_latest(m._latency) + generate_latest(m._rejected)).splitlines()
            if b"_created" not in line
        ]
        for m in (metrics, before)
    ]
    assert text[0] == text[1]
