"""The synchronous client (trio_broker.sync): blocking calls on a private event-loop thread.

The broker runs in a trio thread of its own (the ``thread_broker`` fixture); the tests are
plain functions, as a script or a WSGI app would be.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import trio_broker
import trio_broker.sync
from trio_broker import (
    BrokerUnreachableError,
    ClientClosedError,
    Message,
    QueueNotFoundError,
    RequestTimeoutError,
)

TIMEOUT = 30


def seed(broker) -> str:
    return f"127.0.0.1:{broker.port}"


def new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_blocking_calls_have_the_async_clients_names_results_and_errors(thread_broker, backend):
    with trio_broker.sync.connect(
        seed(thread_broker), timeout=TIMEOUT, client_id="C-SYNC1", backend=backend
    ) as client:
        assert client.client_id == "C-SYNC1"
        assert client.clusters == (thread_broker.cluster_id,)
        assert client.topology().leader.broker_id == thread_broker.broker_id
        queue_id = client.create_queue()
        assert client.append(queue_id, {"a": [1, 1.5, None]}) == 1
        assert client.append_batch(queue_id, ["b", "c", "d"]) == [2, 3, 4]
        assert client.read(queue_id) == Message(1, {"a": [1, 1.5, None]})
        assert client.read_batch(queue_id, 1, peek=True) == [Message(2, "b")]
        producer = client.producer()
        assert producer.append(queue_id, "e") == 5
        assert producer.append_batch(queue_id, ["f"]) == [6]
        # consume is an iterator; with ack, what the loop did not finish comes again.
        seen = []
        for message in client.consume(queue_id, max_messages=2, wait=0, ack=True):
            seen.append(message.data)
            if message.data == "e":
                break
        assert seen == ["b", "c", "d", "e"]
        assert [m.data for m in client.read_batch(queue_id, 10)] == ["d", "e", "f"]
        assert client.seek(queue_id, to="start") == 1
        (info,) = [q for q in client.list_queues().queues if q.queue_id == queue_id]
        assert info.length == 6
        assert client.statistics().open_connections == 1
        with pytest.raises(QueueNotFoundError):
            client.append(queue_id[:-5] + "ZZZZZ", 1)
        with pytest.raises(TypeError, match="not a JSON value"):
            client.append(queue_id, {1, 2})
        with pytest.deprecated_call():
            assert client.read_batch(queue_id, 1, wait_ms=0) == [Message(1, {"a": [1, 1.5, None]})]


def test_the_loop_thread_is_joined_on_exit_and_on_error(thread_broker):
    before = set(threading.enumerate())
    with trio_broker.sync.connect(seed(thread_broker), timeout=TIMEOUT) as client:
        (loop_thread,) = new_threads(before)
        assert loop_thread.name.startswith("trio_broker.sync")
        client.create_queue()
    assert not loop_thread.is_alive()
    assert new_threads(before) == []

    # An exception from the block is raised as itself, and the thread is joined.
    with (
        pytest.raises(KeyError, match="from the block"),
        trio_broker.sync.connect(seed(thread_broker), timeout=TIMEOUT),
    ):
        raise KeyError("from the block")
    assert new_threads(before) == []

    # So when connecting fails.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with (
        pytest.raises(BrokerUnreachableError, match="connection refused"),
        trio_broker.sync.connect(f"127.0.0.1:{port}", timeout=TIMEOUT),
    ):
        pass  # pragma: no cover
    assert new_threads(before) == []

    # A closed client refuses calls clearly.
    with pytest.raises(ClientClosedError):
        client.append("Q-AAAAAAAAAA", 1)


def test_several_threads_share_one_client(thread_broker):
    with trio_broker.sync.connect(seed(thread_broker), timeout=TIMEOUT) as client:
        queue_id = client.create_queue()

        def work(worker: int) -> dict[str, int]:
            return {f"{worker}-{i}": client.append(queue_id, f"{worker}-{i}") for i in range(50)}

        with ThreadPoolExecutor(8) as pool:
            acked = {k: v for result in pool.map(work, range(8)) for k, v in result.items()}
        assert sorted(acked.values()) == list(range(1, 401))
        stored = {}
        while batch := client.read_batch(queue_id, 100):
            stored.update({m.sequence_num: m.data for m in batch})
        assert stored == {seq: value for value, seq in acked.items()}
        # All of it pipelined on one connection from the one loop thread.
        assert client.statistics().open_connections == 1


def test_a_call_that_times_out_raises_and_leaves_the_client_usable(thread_broker):
    with trio_broker.sync.connect(seed(thread_broker), timeout=TIMEOUT) as client:
        queue_id = client.create_queue()
        start = time.monotonic()
        with pytest.raises(RequestTimeoutError, match=r"read_batch did not complete within 0\.2 s"):
            # The broker would hold this read 5 s for a message; the call gives up first.
            client.read_batch(queue_id, peek=True, wait=5, timeout=0.2)
        assert time.monotonic() - start < 4.5
        assert isinstance(RequestTimeoutError("x"), TimeoutError)
        # Usable at once: the next call is answered after the abandoned one.
        assert client.append(queue_id, "after", timeout=TIMEOUT) == 1
        assert client.read(queue_id) == Message(1, "after")
        assert client.statistics().responses_discarded == 1

    # The client's timeout is the default of every call.
    with trio_broker.sync.connect(seed(thread_broker), timeout=0.2) as client:
        empty = client.create_queue()
        with pytest.raises(RequestTimeoutError):
            client.read_batch(empty, peek=True, wait=1)
        assert client.read_batch(queue_id, peek=True, wait=5, timeout=None) == [Message(1, "after")]

    with (
        pytest.raises(ValueError, match="positive"),
        trio_broker.sync.connect(seed(thread_broker), timeout=0),
    ):
        pass  # pragma: no cover
    with (
        trio_broker.sync.connect(seed(thread_broker)) as client,
        pytest.raises(TypeError, match="seconds"),
    ):
        client.read(queue_id, timeout="1")


def test_connecting_to_a_silent_broker_times_out(thread_broker):
    before = set(threading.enumerate())
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.monotonic()
        with (
            pytest.raises(RequestTimeoutError, match=r"connect did not complete within 0\.3 s"),
            trio_broker.sync.connect(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.3),
        ):
            pass  # pragma: no cover
        # Well before the client's own bound on one discovery attempt (5 s).
        assert time.monotonic() - start < 4.5
    assert new_threads(before) == []


def test_consume_waits_for_messages_beyond_the_call_timeout(thread_broker):
    with trio_broker.sync.connect(seed(thread_broker), timeout=1) as client:
        queue_id = client.create_queue()
        messages = client.consume(queue_id, wait=2)
        # The poll waits up to 2 s on the broker for a message, which comes after 1.5 s: past
        # the 1 s timeout, which counts beyond the wait.
        late = threading.Timer(1.5, client.append, (queue_id, "late"), {"timeout": TIMEOUT})
        late.start()
        try:
            assert next(messages) == Message(1, "late")
        finally:
            late.join()


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_usable_from_a_thread_that_runs_an_asyncio_loop(thread_broker, backend):
    """As in a notebook, whose cells run in a thread with a running asyncio loop."""

    async def cell() -> list[Message]:
        with trio_broker.sync.connect(seed(thread_broker), timeout=TIMEOUT, backend=backend) as c:
            queue_id = c.create_queue()
            c.append(queue_id, "from a notebook")
            return c.read_batch(queue_id)

    assert asyncio.run(cell()) == [Message(1, "from a notebook")]


def test_leaving_the_block_ends_calls_other_threads_are_making(thread_broker):
    before = set(threading.enumerate())
    outcome: list[BaseException] = []
    with trio_broker.sync.connect(seed(thread_broker), timeout=TIMEOUT) as client:
        queue_id = client.create_queue()

        def long_poll() -> None:
            try:
                client.read_batch(queue_id, wait=2)
            except BaseException as exc:
                outcome.append(exc)

        poller = threading.Thread(target=long_poll)
        poller.start()
        while client.statistics().requests_in_flight == 0:
            time.sleep(0.01)
    # The poll was cut short by the close (ending its 2 s wait would have returned []). (The
    # broker answers that abandoned poll when its wait ends, so a longer one would hold up the
    # broker fixture's shutdown for its grace period.)
    poller.join(timeout=TIMEOUT)
    assert not poller.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ClientClosedError), outcome
    assert new_threads(before) == []


def test_consume_with_ack_acknowledges_on_a_clean_exit_of_its_block_only(thread_broker):
    with trio_broker.sync.connect(seed(thread_broker), timeout=TIMEOUT) as client:
        queue_id = client.create_queue()
        client.append_batch(queue_id, [1, 2, 3, 4, 5])
        # ``break`` out of the block: everything the loop received is acknowledged.
        with client.consume(queue_id, max_messages=3, wait=0, ack=True) as messages:
            for message in messages:
                if message.data == 2:
                    break
        assert client.read_batch(queue_id, 1, peek=True) == [Message(3, 3)]
        # An exception out of the block acknowledges nothing more: 3 and 4 come again.
        with (
            pytest.raises(ZeroDivisionError),
            client.consume(queue_id, max_messages=3, wait=0, ack=True) as messages,
        ):
            for message in messages:
                if message.data == 4:
                    raise ZeroDivisionError
        with client.consume(queue_id, max_messages=3, wait=0, ack=True) as messages:
            assert [next(messages).data, next(messages).data] == [3, 4]
        # The clean end acknowledged 4, the last message the loop was given.
        assert client.read_batch(queue_id, 5, peek=True) == [Message(5, 5)]


def _parameters(method) -> dict:
    import inspect

    return {
        name: p.default
        for name, p in inspect.signature(method).parameters.items()
        if name not in ("self", "timeout")
    }


def test_the_sync_client_has_every_work_queue_operation_of_the_async_one():
    from trio_broker._client._work import WorkQueues

    for name in [n for n in vars(WorkQueues) if not n.startswith("_")]:
        assert _parameters(getattr(trio_broker.sync.Client, name)) == _parameters(
            getattr(trio_broker.Client, name)
        ), name
    for cls, sync_cls in (
        (trio_broker.Producer, trio_broker.sync.Producer),
        (trio_broker.Client, trio_broker.sync.Client),
    ):
        for name in ("append", "append_batch", "create_queue", "producer"):
            if hasattr(cls, name):
                assert _parameters(getattr(sync_cls, name)) == _parameters(getattr(cls, name))
    for name in ("ack", "nack", "extend"):
        assert _parameters(getattr(trio_broker.sync.GroupMessage, name)) == _parameters(
            getattr(trio_broker.GroupMessage, name)
        )


def test_work_queues_through_the_sync_client(thread_broker):
    with trio_broker.sync.connect(seed(thread_broker), timeout=TIMEOUT) as client:
        queue_id = client.create_queue(name="sync-orders")
        assert client.create_queue(name="sync-orders") == queue_id
        assert client.resolve_queue("sync-orders") == queue_id
        producer = client.producer("P-SYNC", epoch=3)
        assert producer.epoch == 3
        assert producer.append_batch(queue_id, ["a", "b"], headers=[{"k": "v"}, None]) == [1, 2]
        assert client.read_batch(queue_id, 5, peek=True) == [
            Message(1, "a", {"k": "v"}),
            Message(2, "b"),
        ]
        with client.consumer_group(queue_id, "g", visibility_timeout=0.2, prefetch=2) as w:
            assert (w.queue_id, w.group) == (queue_id, "g")
            first = next(iter(w))
            assert (first.sequence_num, first.headers, first.delivery_count) == (1, {"k": "v"}, 1)
            assert first.ack()
        # 2 was leased with 1 (prefetch 2) and never acknowledged: it comes again.
        with client.consumer_group(queue_id, "g") as w:
            again = next(iter(w))
            assert (again.sequence_num, again.delivery_count) == (2, 2)
            assert again.ack()
        assert client.forget_position(queue_id) is False
        client.delete_group(queue_id, "g")
        client.delete_queue(queue_id)
        with pytest.raises(QueueNotFoundError):
            client.resolve_queue("sync-orders")
