"""Prometheus metrics of one broker, served over HTTP by a small trio server.

The same server answers ``/`` with the status page and ``/status.json`` with its data
(``_status.py``).

Each broker has its own registry (several brokers may share a process). Counters and histograms
are updated as requests are answered and transactions commit; the consensus state, the peers and
the queues are read when a scrape arrives. A broker hosting several replication groups reports
each group's consensus and queue series under its ``cluster_id`` label (the cluster's own group
as before; docs/replication.md, "Several leaders"). Queue and per-client series are capped at
``MAX_QUEUE_SERIES`` each, the largest lags first, so a broker with millions of consumers does
not answer with millions of lines.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from functools import reduce
from itertools import accumulate, chain, repeat
from operator import add as _add
from operator import itemgetter
from operator import mul as _mul
from operator import sub as _sub
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ._log import log_event
from ._status import RequestRates, read_status, render_page

if TYPE_CHECKING:
    from ._broker import Broker

MAX_QUEUE_SERIES = 1000
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_MAX_REQUEST_HEAD = 8192
_HTTP_DEADLINE = 10.0


MAX_BACKLOG = 512
"""Writes whose answers wait to be counted (:meth:`BrokerMetrics.observe_batch`) before they
are counted without a read of the metrics."""


class BrokerMetrics:
    def __init__(self, broker: Broker) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._series: dict[tuple[str, Any], tuple[Any, Any, Any]] = {}
        self._latencies: dict[str, Any] = {}
        self._backlog: list[tuple[dict[tuple[str, Any, float], int], float]] = []
        """The tallies of the writes not counted yet, with when each was written. Always this
        list (a fold takes its head, :meth:`fold`): a write from the broker's thread while
        another thread folds lands in it, never in a list already counted."""
        self._folding = threading.Lock()
        """Held by a fold: a read of the registry may come from any thread (the client
        library's series may be read from any), and two folds at once would count a write
        twice or write a latency sum over another's."""
        self._requests = Counter(
            "trio_broker_requests",
            "Requests answered, by operation and status",
            ["operation", "status"],
            registry=None,  # (registered as counted: _Counted)
        )
        self.registry.register(_Counted(self, self._requests))
        self._rejected = Counter(
            "trio_broker_rejected_requests",
            "Requests answered with an error, by error code",
            ["code"],
            registry=None,  # (registered as counted: _Counted)
        )
        self.registry.register(_Counted(self, self._rejected))
        self._latency = Histogram(
            "trio_broker_request_seconds",
            "Time from reading a request to having its answer, by operation",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=None,  # (registered as counted: _Counted)
        )
        self.registry.register(_Counted(self, self._latency))
        self.transactions = Histogram(
            "trio_broker_storage_transaction_seconds",
            "SQLite transactions of the consensus driver; durable ones include the fsync",
            ["durable"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queues: list[tuple[str, int]] = []
        self.client_lags: list[tuple[str, str, int]] = []
        self.registry.register(_StateCollector(broker, self))

    @property
    def requests(self) -> Counter:
        """Requests answered, by operation and status (the writes not counted yet counted
        first, as for every read of the metrics)."""
        self.fold()
        return self._requests

    @property
    def rejected(self) -> Counter:
        self.fold()
        return self._rejected

    @property
    def latency(self) -> Histogram:
        self.fold()
        return self._latency

    def _series_of(self, operation: str, code: Any) -> tuple[Any, Any, Any]:
        key = (operation, code)
        series = self._series.get(key)
        if series is None:
            # Operations and error codes are closed sets (unknown operations are INVALID), so
            # this cache is bounded; it saves three label lookups per request.
            series = self._series[key] = (
                self._requests.labels(operation, "error" if code else "success"),
                self._rejected.labels(str(code)) if code else None,
                self._latency.labels(operation),
            )
        return series

    def _latency_of(self, operation: str) -> Any:
        """The latency series of ``operation`` (only: its requests' series are made when a
        request of that operation and outcome is counted, not before)."""
        latency = self._latencies.get(operation)
        if latency is None:
            latency = self._latencies[operation] = self._latency.labels(operation)
        return latency

    def observe(self, operation: str, response: Any, seconds: float) -> None:
        """One request answered with ``response`` after ``seconds``."""
        self.observe_batch({(operation, getattr(response, "code", None), 0.0): 1}, seconds)

    def observe_batch(self, tally: dict[tuple[str, Any, float], int], now: float) -> None:
        """The answers of one write: how many per ``(operation, error code or None, when
        their receive began)``, answered at ``now``. Kept as it is until the metrics are
        read (:meth:`fold`: by a scrape, the status page, or any read of :attr:`requests`,
        :attr:`rejected`, :attr:`latency` or the registry), or :data:`MAX_BACKLOG` writes
        wait: the series are then updated once per series for all of them, where each
        write's update took a lock of the client library per series (docs/performance-history.md,
        "The leader's request path without an object per APPEND")."""
        backlog = self._backlog
        backlog.append((tally, now))
        if len(backlog) >= MAX_BACKLOG:
            self.fold()

    def fold(self) -> None:
        """Count the writes that wait (:meth:`observe_batch`): each series then reads exactly
        as when each write updated it, its latency sum included (added in the order the
        answers were written, as each write added them). Safe from any thread: one fold at a
        time, each taking the writes that wait when it starts (a slice and a ``del`` of the
        list's head, each one step for the interpreter, so a write appended meanwhile from
        another thread stays for the next)."""
        backlog = self._backlog
        if not backlog:
            return
        with self._folding:
            taken = len(backlog)
            if taken:
                writes = backlog[:taken]
                del backlog[:taken]
                self._count(writes)

    def _count(self, writes: list[tuple[dict[tuple[str, Any, float], int], float]]) -> None:
        """:meth:`fold`'s update of the series by ``writes`` (under its lock), read as columns
        (each answer's operation, outcome, latency and count) with no line of Python per
        write, then counted: writes all of one operation and outcome (one request in flight,
        a pipelined receive's APPENDs) by :meth:`_count_alike`, others one key at a time
        (docs/performance-history.md, "The leader's Python per write and per Ready (tenth round)").
        Either makes the updates that each write's own made (tests/test_leadready_metrics.py
        holds them to the code before)."""
        if not _alike(writes):  # (a few writes' keys: several operations or outcomes)
            self._count_each(writes)
            return
        # (itemgetters, not ``zip(*rows)``: an iterator per row would be as many objects
        # for the cyclic collector to count, and to walk while the writes wait young)
        tallies = list(map(_FIRST, writes))
        nows: list[float] = list(map(_SECOND, writes))
        keys = list(chain.from_iterable(tallies))  # (every key of every write, in order)
        operations = list(map(_FIRST, keys))
        codes = list(map(_SECOND, keys))
        operation, code = operations[0], codes[0]
        if operations.count(operation) != len(keys) or codes.count(code) != len(keys):
            self._count_each(writes)
            return
        starts = map(_THIRD, keys)
        if len(keys) == len(nows) and all(tallies):  # (one key a write: one in flight)
            counts = list(map(dict.__getitem__, tallies, keys))
        else:
            nows = list(chain.from_iterable(map(repeat, nows, map(len, tallies))))
            counts = list(chain.from_iterable(map(dict.values, tallies)))
        if not self._count_alike(operation, code, list(map(_sub, nows, starts)), counts):
            self._count_each(writes)

    def _count_each(self, writes: list[tuple[dict[tuple[str, Any, float], int], float]]) -> None:
        """:meth:`_count` one key of one write at a time (writes of several operations or
        outcomes: a Python loop over them costs less than grouping the columns)."""
        cells: dict[tuple[str, Any, int], int] = {}
        """Answers per operation, outcome and latency bucket (a few keys for many writes)."""
        sums: dict[str, list[float]] = {}
        bounds = _BOUNDS
        bisect_left = bisect.bisect_left
        for tally, now in writes:
            for (operation, code, started), count in tally.items():
                amount = now - started
                cell = (operation, code, bisect_left(bounds, amount))  # (first bound >= it)
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
            requests, rejected, _ = self._series_of(operation, code)
            requests.inc(count)
            if rejected is not None:
                rejected.inc(count)
        for (operation, index), count in buckets.items():
            self._latency_of(operation)._buckets[index].inc(count)
        for operation, amounts in sums.items():
            total = self._latency_of(operation)._sum
            value = total.get()
            for amount in amounts:
                value += amount
            total.set(value)

    def _count_alike(
        self, operation: str, code: Any, amounts: list[float], counts: list[int]
    ) -> bool:
        """:meth:`_count` of answers all of ``operation`` and ``code`` (``amounts``: their
        latencies, ``counts``: how many of each), each bucket's count read from the latencies
        sorted: a latency falls in the first bucket whose bound is not under it (where
        ``bisect_left`` of the bounds places it), so past as many sorted latencies as
        ``bisect_right`` of each bound counts. False, and nothing counted, when a latency is
        not a number (it sorts nowhere)."""
        each = counts[0]
        alike = counts.count(each) == len(counts)  # (as many answers in every write)
        series = self._latency_of(operation)
        total = series._sum
        value = reduce(
            _add, amounts if each == 1 and alike else map(_mul, amounts, counts), total.get()
        )
        if value != value:  # (a latency not a number, or infinities of both signs)
            return False
        if alike:
            amounts.sort()
            upto_each = None  # (the answers up to each sorted latency: its place + 1, times each)
            number = len(amounts) * each
        else:
            order = sorted(range(len(amounts)), key=amounts.__getitem__)
            amounts = list(map(amounts.__getitem__, order))
            upto_each = list(accumulate(map(counts.__getitem__, order)))
            number = upto_each[-1]
        requests, rejected, _ = self._series_of(operation, code)
        requests.inc(number)
        if rejected is not None:
            rejected.inc(number)
        counted = 0
        for bound, bucket in zip(_BOUNDS, series._buckets, strict=True):
            upto = bisect.bisect_right(amounts, bound)  # (the latencies not over ``bound``)
            if upto_each is None:
                upto *= each
            elif upto:
                upto = upto_each[upto - 1]
            if upto > counted:
                bucket.inc(upto - counted)
                counted = upto
        total.set(value)
        return True


def _alike(writes: list[tuple[dict[tuple[str, Any, float], int], float]]) -> bool:
    """Whether :meth:`BrokerMetrics._count` may find ``writes`` all of one operation and
    outcome, from a few of them (spread over the writes, and the last few in a row, for mixes
    that alternate): a fold of mixed writes then costs no column made for nothing."""
    first = None
    sampled = writes[:: max(1, len(writes) // _SAMPLED)] + writes[-_SAMPLED:]
    for tally, _ in sampled:
        for operation, code, _ in tally:
            if first is None:
                first = operation, code
            elif operation != first[0] or code != first[1]:
                return False
    return first is not None


_SAMPLED = 8
"""Writes :func:`_alike` reads of a fold."""
_FIRST, _SECOND, _THIRD = itemgetter(0), itemgetter(1), itemgetter(2)


def observe_many(histogram: Any, amount: float, count: int) -> None:
    """``histogram.observe(amount)`` ``count`` times, with one update of its sum and of the
    bucket ``amount`` falls in (the updates ``Histogram.observe`` makes, through the client
    library's own value objects; tests/test_metrics.py checks the exposition is the same)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or count == 1:
        for _ in range(count):
            histogram.observe(amount)
        return
    total.inc(amount * count)
    buckets[bisect.bisect_left(bounds, amount)].inc(count)  # the first bound >= amount


_BOUNDS = [*map(float, _LATENCY_BUCKETS), float("inf")]
"""The latency histogram's bounds, as the client library keeps them (``_upper_bounds``)."""


class _Counted(Collector):
    """A request series in the registry, counting the writes that wait before it is read
    (:meth:`BrokerMetrics.fold`). Under the series' own names (its ``describe``), so a read
    of some series by name (``restricted_registry``, what the client library's HTTP handlers
    read for ``name[]=...``) counts them too, as a read of the whole registry does."""

    def __init__(self, metrics: BrokerMetrics, series: Any) -> None:
        self._metrics = metrics
        self._series = series

    def describe(self) -> Any:
        return self._series.describe()

    def collect(self) -> Any:
        self._metrics.fold()
        return self._series.collect()


class _StateCollector(Collector):
    def __init__(self, broker: Broker, metrics: BrokerMetrics) -> None:
        self.broker = broker
        self.metrics = metrics

    def describe(self) -> list[Any]:
        # Registration would otherwise call collect() before the broker is fully built.
        return []

    def _replicas(self) -> list[Broker]:
        """The group replicas this broker reports: its own group first, then the others it
        hosts (docs/replication.md, "Several leaders"), each under its ``cluster_id``."""
        broker = self.broker
        host = broker.host
        if host is None or not host.several:
            return [broker]
        return [broker, *(b for g, b in sorted(host.groups.items()) if b is not broker)]

    def collect(self) -> Iterator[Any]:
        broker = self.broker
        replicas = [(b, b.statistics()) for b in self._replicas()]
        stats = replicas[0][1]
        labels = ["broker_id", "cluster_id"]
        ids = [broker.broker_id, broker.cluster_id]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"trio_broker_{name}", doc, labels=labels)
            g.add_metric(ids, value)
            return g

        def per_group(name: str, doc: str, value: Callable[[Any], float]) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"trio_broker_{name}", doc, labels=labels)
            for replica, replica_stats in replicas:
                g.add_metric([replica.broker_id, replica.cluster_id], value(replica_stats))
            return g

        role = GaugeMetricFamily(
            "trio_broker_role", "1 for this broker's current role", labels=[*labels, "role"]
        )
        for replica, replica_stats in replicas:
            for name in ("leader", "follower", "candidate", "pre_candidate"):
                role.add_metric(
                    [replica.broker_id, replica.cluster_id, name],
                    1.0 if replica_stats.role == name else 0.0,
                )
        yield role
        yield per_group("term", "Current consensus term", lambda st: st.term)
        cmap = None if broker.host is None else broker.host.meta.map
        if cmap is not None:  # (a cluster whose groups the cluster map places)
            yield gauge(
                "cluster_map_version",
                "Version of the cluster map applied here (one more per metadata command)",
                cmap.version,
            )
            yield gauge(
                "groups_hosted",
                "Data groups this broker holds a replica of, as the cluster map places them",
                len(set(broker.host.groups) & set(cmap.groups)),
            )
        yield per_group(
            "commit_index", "Highest log index known committed", lambda st: st.commit_index
        )
        yield per_group(
            "applied_index",
            "Highest log index applied to the queues",
            lambda st: st.applied_index,
        )
        yield per_group(
            "cluster_version", "Membership configuration version", lambda st: st.cluster_version
        )
        yield per_group("log_entries", "Entries kept in the log", lambda st: st.log_entries)
        yield gauge("connections", "Open client and peer connections", stats.connections)
        yield per_group(
            "pending_proposals",
            "Proposals waiting to be applied",
            lambda st: st.pending_proposals,
        )
        yield per_group(
            "recovering",
            "1 while this broker's log lacks entries it had acknowledged (damaged or lost by "
            "its disk): it neither leads nor votes for a log behind them until repaired",
            lambda st: st.recovering_until is not None,
        )
        yield per_group(
            "unverified",
            "1 while this broker, its machine rebooted, has not yet learned what it may have "
            "acknowledged before: it grants no vote (docs/reliability.md)",
            lambda st: st.unverified,
        )
        yield per_group(
            "disk_full",
            "1 while the broker refuses writes for lack of disk space (reserve reached, or a "
            "write failed)",
            lambda st: st.disk_state != "ok",
        )
        if stats.disk_free_bytes is not None:
            yield gauge(
                "disk_free_bytes", "Free space of the data directory", stats.disk_free_bytes
            )
        yield gauge(
            "disk_reserve_bytes",
            "Free space below which writes are refused",
            stats.disk_reserve_bytes,
        )
        disk_failures = CounterMetricFamily(
            "trio_broker_disk_write_failures",
            "Storage transactions that failed for lack of space (rolled back and retried)",
            labels=labels,
        )
        values_damaged = CounterMetricFamily(
            "trio_broker_values_damaged",
            "Stored values found damaged (a checksum mismatch or a missing row)",
            labels=labels,
        )
        values_repaired = CounterMetricFamily(
            "trio_broker_values_repaired",
            "Damaged or missing stored values replaced by another broker's intact copy",
            labels=labels,
        )
        values_waiting = GaugeMetricFamily(
            "trio_broker_values_awaiting_repair",
            "Damaged stored values found and not repaired yet (never served meanwhile; "
            "docs/reliability.md, 'Repairing damaged values')",
            labels=labels,
        )
        members = GaugeMetricFamily(
            "trio_broker_members", "Configured members by status", labels=[*labels, "status"]
        )
        elections = CounterMetricFamily(
            "trio_broker_elections_won", "Elections this broker won", labels=labels
        )
        transfers = CounterMetricFamily(
            "trio_broker_leadership_transfers",
            "Leadership transfers: started, completed and aborted by this broker as leader; "
            "received: elections it won because the leader handed over to it",
            labels=[*labels, "outcome"],
        )
        lag = GaugeMetricFamily(
            "trio_broker_replication_lag_entries",
            "Leader only: log entries a member does not have yet",
            labels=[*labels, "peer"],
        )
        dropped = CounterMetricFamily(
            "trio_broker_peer_dropped_messages",
            "Messages for a peer dropped while it was unreachable or its outbox full",
            labels=[*labels, "peer"],
        )
        read_rounds = CounterMetricFamily(
            "trio_broker_read_index_rounds",
            "Heartbeat rounds sent while reads waited for a leadership confirmation "
            "(ReadIndex: one round confirms every read waiting)",
            labels=labels,
        )
        read_index = CounterMetricFamily(
            "trio_broker_read_index_reads",
            "Reads that took the ReadIndex path, by outcome: answered without a log entry; "
            "logged (their run would have changed state, or the core could not take them); "
            "failed (NOT_LEADER: the leader stepped down or began a transfer while they waited)",
            labels=[*labels, "outcome"],
        )
        queue_length = GaugeMetricFamily(
            "trio_broker_queue_length", "Messages in a queue", labels=[*labels, "queue_id"]
        )
        client_lag = GaugeMetricFamily(
            "trio_broker_client_lag_messages",
            "Messages of a queue a client has not read yet",
            labels=[*labels, "queue_id", "client_id"],
        )
        for replica, st in replicas:
            gid = [replica.broker_id, replica.cluster_id]
            disk_failures.add_metric(gid, st.disk_write_failures)
            repairs = replica.driver.repair.statistics()
            values_damaged.add_metric(gid, repairs.damaged)
            values_repaired.add_metric(gid, repairs.repaired)
            values_waiting.add_metric(gid, repairs.waiting)
            members.add_metric([*gid, "active"], st.members_active)
            members.add_metric([*gid, "inactive"], st.members_inactive)
            elections.add_metric(gid, st.elections_won)
            transfers.add_metric([*gid, "started"], st.transfers_started)
            transfers.add_metric([*gid, "completed"], st.transfers_completed)
            transfers.add_metric([*gid, "aborted"], st.transfers_aborted)
            transfers.add_metric([*gid, "received"], st.transfers_received)
            reads = replica.driver.reads.statistics(replica.driver.node)
            read_rounds.add_metric(gid, reads.rounds)
            read_index.add_metric([*gid, "answered"], reads.answered)
            read_index.add_metric([*gid, "logged"], reads.to_log)
            read_index.add_metric([*gid, "failed"], reads.failed)
            for peer, behind in st.replication_lag:
                lag.add_metric([*gid, peer], behind)
            for peer, count in st.peers_dropped:
                dropped.add_metric([*gid, peer], count)
            for queue_id, length in replica.metrics.queues:
                queue_length.add_metric([*gid, queue_id], length)
            for client_id, queue_id, behind in replica.metrics.client_lags:
                client_lag.add_metric([*gid, queue_id, client_id], behind)
        yield disk_failures
        yield values_damaged
        yield values_repaired
        yield values_waiting
        yield members
        yield elections
        yield transfers
        yield read_rounds
        yield read_index
        yield lag
        yield dropped
        yield queue_length
        yield client_lag


async def _refresh_queue_stats(broker: Broker) -> None:
    host = broker.host
    replicas = [broker] if host is None or not host.several else list(host.groups.values())
    for replica in replicas:
        queues, lags = await replica.queue_stats(MAX_QUEUE_SERIES)
        replica.metrics.queues = queues
        replica.metrics.client_lags = lags


async def _handle_http(broker: Broker, rates: RequestRates, stream: trio.abc.Stream) -> None:
    async with stream:
        head = b""
        with trio.move_on_after(_HTTP_DEADLINE):
            while b"\r\n\r\n" not in head and len(head) < _MAX_REQUEST_HEAD:
                data = await stream.receive_some(4096)
                if not data:
                    return
                head += data
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            method, path = request_line[:2] if len(request_line) >= 2 else ("", "")
            path = path.split("?", 1)[0]
            if method == "GET" and path == "/metrics":
                await _refresh_queue_stats(broker)
                body = generate_latest(broker.metrics.registry)
                status, content_type = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
            elif method == "GET" and path in ("/", "/status.json"):
                page = await read_status(broker, rates)
                if path == "/":
                    body = render_page(page).encode()
                    status, content_type = "200 OK", "text/html; charset=utf-8"
                else:
                    body = json.dumps(page).encode()
                    status, content_type = "200 OK", "application/json"
            else:
                body = b"not found; the status page is at /, metrics are at /metrics\n"
                status, content_type = "404 Not Found", "text/plain; charset=utf-8"
            header = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            await stream.send_all(header + body)


async def serve_metrics(
    broker: Broker, host: str, port: int, *, task_status: trio.TaskStatus[int]
) -> None:
    """Serve ``GET /metrics`` and the status page (``/``, ``/status.json``) on ``host:port``;
    ``task_status.started`` gets the port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log_event(logging.INFO, "metrics.listening", host=host, port=bound)
    rates = RequestRates(broker)

    async def handler(stream: trio.abc.Stream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await _handle_http(broker, rates, stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rates.run)
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound)
