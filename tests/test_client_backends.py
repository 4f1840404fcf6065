"""The client library on both of anyio's backends: trio and asyncio.

The client runs on anyio, so one ``connect`` serves trio and asyncio programs. These tests run
the representative client operations (pipelining, cancellation, routing, failover, idempotent
producers, consume, admin calls, TLS, tokens, errors) once per backend, with anyio's pytest
plugin; the brokers are a trio program of their own, in a background thread (the
``trio_thread`` fixture), so that the asyncio runs have no trio loop in their thread. The rest
of the client's behaviour is covered under trio in test_client.py and test_client_operations.py.
"""

from __future__ import annotations

import asyncio
import ssl

import anyio
import pytest
import sniffio
import trustme

from trio_broker import (
    BrokerUnreachableError,
    ClientClosedError,
    Message,
    OutcomeUnknownError,
    QueueNotFoundError,
    TooLargeError,
    UnauthorizedError,
    connect,
)
from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker.testing import open_local_cluster

pytestmark = pytest.mark.anyio

DEADLINE = 60


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request):
    return request.param


def seed(port: int) -> str:
    return f"127.0.0.1:{port}"


async def test_operations_pipeline_on_one_connection(thread_broker, anyio_backend):
    # Run by anyio's plugin on the backend named, not by pytest-trio (tests/conftest.py).
    assert sniffio.current_async_library() == anyio_backend
    with anyio.fail_after(DEADLINE):
        async with connect(seed(thread_broker.port), client_id="C-PIPE1") as client:
            queue_id = await client.create_queue()
            acked: dict[int, int] = {}

            async def append(i: int) -> None:
                acked[i] = await client.append(queue_id, {"i": i, "f": 1.5})

            async with anyio.create_task_group() as tasks:
                for i in range(200):
                    tasks.start_soon(append, i)
            assert sorted(acked.values()) == list(range(1, 201))
            assert client.statistics().open_connections == 1
            stored = {}
            while batch := await client.read_batch(queue_id, 64):
                stored.update({m.sequence_num: m.data for m in batch})
            assert stored == {seq: {"i": i, "f": 1.5} for i, seq in acked.items()}
            assert await client.read(queue_id) is None
            page = await client.list_queues()
            (info,) = [q for q in page.queues if q.queue_id == queue_id]
            assert info.length == 200
            with pytest.raises(QueueNotFoundError):
                await client.append(queue_id[:-5] + "ZZZZZ", 1)
            with pytest.raises(TooLargeError):
                await client.append(queue_id, "x" * (2 << 20))
    with pytest.raises(ClientClosedError):
        await client.append(queue_id, 1)


async def test_a_cancelled_call_leaves_the_connection_usable(thread_broker, anyio_backend):
    with anyio.fail_after(DEADLINE):
        async with connect(seed(thread_broker.port)) as client:
            queue_id = await client.create_queue()
            with anyio.move_on_after(0.1) as scope:
                # The broker holds it until a message comes (peek: it moves no position).
                await client.read_batch(queue_id, peek=True, wait=0.5)
            assert scope.cancelled_caught
            # The append is pipelined behind the abandoned read; its answer is its own.
            assert await client.append(queue_id, "after") == 1
            assert client.statistics().responses_discarded == 1
            assert await client.read(queue_id) == Message(1, "after")


async def test_consume_with_acknowledgement_redelivers_what_was_not_processed(
    thread_broker, anyio_backend
):
    with anyio.fail_after(DEADLINE):
        async with connect(seed(thread_broker.port), client_id="C-CONS1") as client:
            queue_id = await client.create_queue()
            await client.append_batch(queue_id, list(range(6)))
            seen = []
            async for message in client.consume(queue_id, max_messages=4, wait=0, ack=True):
                seen.append(message.data)
                if message.data == 5:
                    break
            assert seen == list(range(6))
            # The second batch (4, 5) was never acknowledged: it comes again.
            again = []
            async for message in client.consume(queue_id, max_messages=4, wait=0.05, ack=True):
                again.append(message.data)
                if message.data == 5:
                    break
            assert again == [4, 5]


async def test_errors_are_raised_as_themselves(anyio_backend, thread_broker):
    with anyio.fail_after(DEADLINE):
        with pytest.raises(BrokerUnreachableError) as info:
            async with connect(["127.0.0.1:1"]):
                pass  # pragma: no cover
        assert info.value.errors[0][1] == "connection refused"
        with pytest.raises(KeyError, match="from the body"):
            async with connect(seed(thread_broker.port)):
                raise KeyError("from the body")


async def test_a_lost_connection_makes_a_sent_read_outcome_unknown(
    ram_path, trio_thread, anyio_backend
):
    cluster = await trio_thread.aenter(open_local_cluster(ram_path, 1))
    port = cluster.ports["b1"]
    with anyio.fail_after(DEADLINE):
        async with connect(seed(port)) as client:
            queue_id = await client.create_queue()
            async with anyio.create_task_group() as tasks:

                async def read_then_fail() -> None:
                    with pytest.raises(OutcomeUnknownError) as info:
                        await client.read_batch(queue_id, wait=30)
                    assert info.value.details["operation"] == "READ"

                tasks.start_soon(read_then_fail)
                while client.statistics().requests_in_flight == 0:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                await trio_thread.acall(cluster.stop, "b1")


async def test_routing_failover_producer_and_admin(ram_path, trio_thread, anyio_backend):
    cluster = await trio_thread.aenter(open_local_cluster(ram_path, 3))
    with anyio.fail_after(DEADLINE):
        leader = await trio_thread.acall(cluster.wait_for_leader)
        replica = next(b for b in cluster.brokers.values() if b is not leader)
        # A replica as the only seed leads the client to the leader.
        async with connect(seed(replica.port)) as client:
            assert client.topology().leader.broker_id == leader.broker_id
            queue_id = await client.create_queue()
            producer = client.producer()
            sent: list[int] = []
            under_way = anyio.Event()

            async def produce() -> None:
                for i in range(200):
                    await producer.append(queue_id, i)
                    sent.append(i)
                    if i == 40:
                        under_way.set()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(produce)
                await under_way.wait()
                await trio_thread.acall(cluster.stop, cluster.name_of(leader))
            assert sent == list(range(200))
            stored = []
            while batch := await client.read_batch(queue_id, 1000):
                stored += [m.data for m in batch]
            assert stored == list(range(200)), "each value stored once, in order"
            assert client.statistics().retries >= 1
            new = await client.cluster_query()
            assert new.leader is not None and new.leader.broker_id != leader.broker_id
            # Admin calls: hand leadership to the other live voter, then compact the logs.
            other = next(
                b.broker_id
                for b in new.brokers
                if b.broker_id not in (leader.broker_id, new.leader.broker_id)
            )
            moved = await client.transfer_leadership(other)
            assert moved.leader_id == other
            assert await client.append(queue_id, "after transfer") == 201
            taken = await client.take_snapshot(seed(cluster.ports[cluster.name_of(replica)]))
            assert len(taken) == 1 and taken[0].snapshot_index >= 1


@pytest.fixture
def tls_settings(ram_path) -> tuple[dict[str, str], trustme.CA]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = {name: ram_path / f"{name}.pem" for name in ("cert", "key", "ca")}
    paths["cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    settings = {"tls_cert": str(paths["cert"]), "tls_key": str(paths["key"])}
    return settings | {"tls_ca": str(paths["ca"])}, ca


async def test_tls_and_tokens(ram_path, trio_thread, tls_settings, anyio_backend):
    settings, ca = tls_settings
    tokens = ram_path / "tokens"
    tokens.write_text("token-a\n")
    config = BrokerConfig(
        data_dir=ram_path / "secure",
        port=0,
        client_tokens_file=tokens,
        allow_open_peers=True,  # one broker, no peers: no cluster secret needed
        **settings,
    )
    broker = await trio_thread.aenter(open_broker(config))
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    with anyio.fail_after(DEADLINE):
        async with connect(seed(broker.port), ssl_context=trusting, token="token-a") as client:
            queue_id = await client.create_queue()
            assert await client.append(queue_id, "secret") == 1
            assert await client.read(queue_id) == Message(1, "secret")
        with pytest.raises(UnauthorizedError, match="client token refused"):
            async with connect(seed(broker.port), ssl_context=trusting, token="token-z"):
                pass  # pragma: no cover
        # Without trusting the broker's CA, the handshake fails and nothing is sent.
        with pytest.raises(BrokerUnreachableError, match="TLS handshake failed"):
            async with connect(
                seed(broker.port), ssl_context=ssl.create_default_context(), token="token-a"
            ):
                pass  # pragma: no cover


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_native_cancellation_leaves_the_connection_usable(
    thread_broker, anyio_backend
):
    """asyncio code cancels with asyncio.timeout and Task.cancel, not anyio's scopes."""
    async with connect(seed(thread_broker.port)) as client:
        queue_id = await client.create_queue()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.read_batch(queue_id, peek=True, wait=0.5)
        sent = client.statistics().requests_sent
        task = asyncio.create_task(client.read_batch(queue_id, peek=True, wait=0.5))
        async with asyncio.timeout(DEADLINE):
            while client.statistics().requests_sent == sent:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(DEADLINE):
            assert await client.append(queue_id, "after") == 1
            assert await client.read(queue_id) == Message(1, "after")
        stats = client.statistics()
        assert (stats.responses_discarded, stats.requests_in_flight) == (2, 0)
