"""Prometheus metrics, scraped over HTTP from live brokers and parsed."""

from __future__ import annotations

import json

import trio
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from trio_broker._errors import BrokerError
from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker._runtime._metrics import BrokerMetrics, observe_many
from trio_broker.testing import open_local_cluster

from .wire import RawConnection, call


async def http_get(port: int, path: str) -> tuple[str, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = await http_get(port, "/metrics")
    assert status == "HTTP/1.1 200 OK"
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = tuple(
                sorted(
                    (k, v) for k, v in sample.labels.items() if k not in ("broker_id", "cluster_id")
                )
            )
            samples[(sample.name, key)] = sample.value
    return samples


async def test_metrics_of_a_serving_broker(ram_path):
    config = BrokerConfig(data_dir=ram_path, port=0, metrics_port=0)
    async with open_broker(config) as broker:
        q = (await call(broker.port, {"operation": "CREATE_QUEUE"}))["queue_id"]
        for i in range(3):
            await call(broker.port, {"operation": "APPEND", "queue_name": q, "data": i})
        await call(broker.port, {"operation": "READ", "queue_name": q, "client_id": "C-LAGGY"})
        await call(broker.port, {"operation": "READ", "queue_name": "Q-NONE", "client_id": "C-1"})
        await call(broker.port, {"operation": "NOPE"})
        m = await scrape(broker.metrics_port)
        assert m[("trio_broker_role", (("role", "leader"),))] == 1
        assert m[("trio_broker_role", (("role", "follower"),))] == 0
        assert (
            m[("trio_broker_requests_total", (("operation", "APPEND"), ("status", "success")))] == 3
        )
        assert m[("trio_broker_requests_total", (("operation", "READ"), ("status", "error")))] == 1
        assert m[("trio_broker_rejected_requests_total", (("code", "QUEUE_NOT_FOUND"),))] == 1
        assert m[("trio_broker_rejected_requests_total", (("code", "UNKNOWN_OPERATION"),))] == 1
        assert m[("trio_broker_request_seconds_count", (("operation", "APPEND"),))] == 3
        assert m[("trio_broker_queue_length", (("queue_id", q),))] == 3
        assert (
            m[("trio_broker_client_lag_messages", (("client_id", "C-LAGGY"), ("queue_id", q)))] == 2
        )
        assert m[("trio_broker_storage_transaction_seconds_count", (("durable", "true"),))] >= 4
        assert m[("trio_broker_commit_index", ())] == broker.node.commit
        assert m[("trio_broker_members", (("status", "active"),))] == 1
        status, _ = await http_get(broker.metrics_port, "/other")
        assert status == "HTTP/1.1 404 Not Found"


async def test_leader_reports_replication_lag_per_peer(ram_path):
    with trio.fail_after(30):
        async with open_local_cluster(ram_path, 3, metrics_port=0) as cluster:
            leader = await cluster.wait_for_leader()
            m = await scrape(leader.metrics_port)
            peers = {b.broker_id for b in cluster.brokers.values() if b is not leader}
            lags = {
                dict(k)["peer"]: v
                for (name, k), v in m.items()
                if name == "trio_broker_replication_lag_entries"
            }
            assert set(lags) == peers
            assert all(v >= 0 for v in lags.values())
            replica = next(b for b in cluster.brokers.values() if b is not leader)
            m = await scrape(replica.metrics_port)
            assert m[("trio_broker_role", (("role", "follower"),))] == 1
            assert not [k for k in m if k[0] == "trio_broker_replication_lag_entries"]


async def test_leadership_transfers_are_counted(ram_path):
    with trio.fail_after(30):
        async with open_local_cluster(ram_path, 3, metrics_port=0) as cluster:
            old = await cluster.wait_for_leader()
            new_id = await old.transfer_leadership()
            assert isinstance(new_id, str), new_id
            new = next(b for b in cluster.brokers.values() if b.broker_id == new_id)
            m = await scrape(old.metrics_port)
            counted = "trio_broker_leadership_transfers_total"
            assert m[(counted, (("outcome", "started"),))] == 1
            assert m[(counted, (("outcome", "completed"),))] == 1
            assert m[(counted, (("outcome", "aborted"),))] == 0
            m = await scrape(new.metrics_port)
            assert m[(counted, (("outcome", "received"),))] == 1
            assert m[(counted, (("outcome", "started"),))] == 0


async def test_status_page_data_of_a_cluster(ram_path):
    """``/status.json`` (what the status page shows) on the leader and on a replica, and the
    page itself, which escapes what clients chose (their ids)."""
    with trio.fail_after(30):
        async with open_local_cluster(ram_path, 3, metrics_port=0) as cluster:
            leader = await cluster.wait_for_voters(3)
            q = (await call(leader.port, {"operation": "CREATE_QUEUE"}))["queue_id"]
            for i in range(2):
                await call(leader.port, {"operation": "APPEND", "queue_name": q, "data": i})
            odd = "<b>C&1</b>"
            await call(leader.port, {"operation": "READ", "queue_name": q, "client_id": odd})
            status, body = await http_get(leader.metrics_port, "/status.json")
            assert status == "HTTP/1.1 200 OK"
            page = json.loads(body)
            assert page["broker"]["broker_id"] == leader.broker_id
            assert page["broker"]["role"] == "leader"
            (group,) = page["groups"]
            assert group["group_id"] == leader.cluster_id
            assert (group["leader_id"], group["voters"], group["learners"]) == (
                leader.broker_id,
                3,
                0,
            )
            members = {b["broker_id"]: b for b in page["brokers"]}
            assert set(members) == {b.broker_id for b in cluster.brokers.values()}
            assert all(isinstance(m["lag"], int) and m["lag"] >= 0 for m in members.values())
            assert members[leader.broker_id]["role"] == "leader"
            (queue,) = page["queues"]
            assert (queue["queue_id"], queue["length"]) == (q, 2)
            assert queue["consumers"] == [{"client_id": odd, "position": 1, "lag": 1}]
            assert {r["operation"]: r["total"] for r in page["requests"]}["APPEND"] == 2

            status, html = await http_get(leader.metrics_port, "/")
            assert status == "HTTP/1.1 200 OK"
            assert "&lt;b&gt;C&amp;1&lt;/b&gt;" in html.decode() and odd not in html.decode()

            replica = next(b for b in cluster.brokers.values() if b is not leader)
            page = json.loads((await http_get(replica.metrics_port, "/status.json"))[1])
            assert page["broker"]["role"] == "replica"
            assert page["broker"]["leader_id"] == leader.broker_id
            assert all(b["lag"] is None for b in page["brokers"])  # only the leader knows lags


def _samples(metrics) -> list:
    """The request series' samples, without their creation times."""
    return [
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in (metrics.requests, metrics.rejected, metrics.latency)
        for f in family.collect()
        for s in f.samples
        if not s.name.endswith("_created")
    ]


def test_a_write_counted_at_once_reads_as_each_answer_counted_alone():
    """observe_batch updates each series once per (operation, code, receive began), and the
    series then read exactly as if each answer had been observed on its own."""
    now = 100.0
    answers = [  # (operation, error code or None, when its receive began)
        *[("APPEND", None, 99.9995)] * 7,  # about 0.5 ms: near a bucket's bound
        *[("APPEND", None, 99.98)] * 3,
        ("APPEND", "TOO_LARGE", 99.98),
        *[("READ", "QUEUE_NOT_FOUND", 90.0)] * 2,  # 10 s: above every bound
        ("INVALID", "UNKNOWN_OPERATION", 99.99),
    ]
    alone = BrokerMetrics(broker=None)  # (the broker is read only when scraped)
    for operation, code, started in answers:
        response = BrokerError(code, "refused") if code else object()
        alone.observe(operation, response, now - started)
    together = BrokerMetrics(broker=None)
    tally: dict = {}
    for key in answers:
        tally[key] = tally.get(key, 0) + 1
    together.observe_batch(tally, now)
    assert _samples(together) == _samples(alone)
    counts = {(n, labels): v for n, labels, v in _samples(together)}
    assert (
        counts[("trio_broker_requests_total", (("operation", "APPEND"), ("status", "success")))]
        == 10
    )
    assert counts[("trio_broker_request_seconds_count", (("operation", "READ"),))] == 2


async def test_a_pipelined_receive_is_counted_request_by_request(ram_path):
    config = BrokerConfig(data_dir=ram_path, port=0, metrics_port=0)
    async with open_broker(config) as broker:
        q = (await call(broker.port, {"operation": "CREATE_QUEUE"}))["queue_id"]
        conn = await RawConnection.open(broker.port)
        requests = [{"operation": "APPEND", "queue_name": q, "data": i} for i in range(40)]
        requests[10:10] = [{"operation": "NOPE"}] * 3
        with trio.fail_after(10):
            await conn.send(*requests)
            for _ in requests:
                assert await conn.receive() is not None
        await conn.aclose()
        m = await scrape(broker.metrics_port)
        key = ("trio_broker_requests_total", (("operation", "APPEND"), ("status", "success")))
        assert m[key] == 40
        assert m[("trio_broker_request_seconds_count", (("operation", "APPEND"),))] == 40
        assert m[("trio_broker_rejected_requests_total", (("code", "UNKNOWN_OPERATION"),))] == 3


def test_many_observations_at_once_fall_in_the_bucket_one_falls_in():
    for amount in (0.0, 0.0005, 0.00050001, 0.004, 5.0, 7.5):  # bounds included
        one, many = (
            Histogram("h", "h", buckets=(0.0005, 0.001, 5), registry=CollectorRegistry())
            for _ in range(2)
        )
        for _ in range(3):
            one.observe(amount)
        observe_many(many, amount, 3)
        samples = [
            [(s.name, s.labels, s.value) for s in h.collect()[0].samples if "created" not in s.name]
            for h in (one, many)
        ]
        assert samples[0] == samples[1], amount
