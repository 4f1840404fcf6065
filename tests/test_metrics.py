"""Prometheus metrics, scraped over HTTP from live brokers and parsed."""

from __future__ import annotations

import json

import trio
from prometheus_client.parser import text_string_to_metric_families

from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker.testing import open_local_cluster

from .wire import call


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


async def test_metrics_of_a_serving_broker(tmp_path):
    config = BrokerConfig(data_dir=tmp_path, port=0, metrics_port=0)
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


async def test_leader_reports_replication_lag_per_peer(tmp_path):
    with trio.fail_after(30):
        async with open_local_cluster(tmp_path, 3, metrics_port=0) as cluster:
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


async def test_leadership_transfers_are_counted(tmp_path):
    with trio.fail_after(30):
        async with open_local_cluster(tmp_path, 3, metrics_port=0) as cluster:
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


async def test_status_page_data_of_a_cluster(tmp_path):
    """``/status.json`` (what the status page shows) on the leader and on a replica, and the
    page itself, which escapes what clients chose (their ids)."""
    with trio.fail_after(30):
        async with open_local_cluster(tmp_path, 3, metrics_port=0) as cluster:
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
