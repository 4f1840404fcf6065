"""The synchronous client, for scripts, notebooks and WSGI apps: no event loop needed.

::

    import trio_broker.sync

    with trio_broker.sync.connect(["127.0.0.1:9001"], timeout=10) as client:
        queue_id = client.create_queue()
        client.append(queue_id, {"hello": "world"})
        for message in client.consume(queue_id):
            print(message.data)

It is the async client (:mod:`trio_broker.client`), run on a private event loop in one thread
of its own, which :func:`connect` starts and joins again when its ``with`` block ends (also
when it ends with an exception). The methods have the async client's names, arguments and
exceptions, and block. Any number of threads may share one client at once (their calls are
pipelined on the same connections); there is no ``fork`` involved.

Every call takes ``timeout`` (seconds; default: the one given to :func:`connect`, else none).
A call that does not finish in time is cancelled and raises
:class:`~trio_broker.RequestTimeoutError`; the client stays usable. As with a lost
connection, a write that timed out may or may not have been applied (an idempotent
:meth:`Client.producer` can retry it safely). The broker still answers a call that timed out,
in its turn: the protocol answers each connection's requests in order, so calls to the same
broker wait behind it (after a timed-out ``read_batch(wait=...)``, until that wait ends).

Why one module of over 600 lines: each method repeats its async twin's signature in full,
keyword by keyword, so that editors, ``help()`` and ``mypy --strict`` show a user the real
arguments (a generic ``__getattr__`` forwarder would hide them); the bodies are one line each
through ``_call``. Splitting the file would split one class, not separate two jobs.
"""

from __future__ import annotations

import contextlib
import functools
import math
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
import anyio.from_thread

from ._client import _client as _async
from ._client import _work
from ._client._common import ClientClosedError, ClientStatistics, Topology
from ._errors import RequestTimeoutError
from ._protocol import (
    DEFAULT_MAX_FRAME,
    LeadershipTransferred,
    MemberAdded,
    Message,
    Retention,
    SnapshotTaken,
)
from ._protocol._messages import QueueList

__all__ = ["Client", "Consumer", "GroupConsumer", "GroupMessage", "Producer", "connect"]

T = TypeVar("T")


class _Default:
    def __repr__(self) -> str:
        return "the client's timeout"


DEFAULT: Any = _Default()
"""``timeout=DEFAULT``: the timeout given to :func:`connect`."""


def _check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if math.isnan(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")


def _poll_timeout(timeout: float | None, wait: float) -> float | None:
    """A poll's timeout: the call's, after the ``wait`` it asks the broker for."""
    return None if timeout is None else timeout + wait


async def _within(seconds: float | None, what: str, call: Callable[[], Awaitable[T]]) -> T:
    """The event-loop side of a call: ``call()`` within ``seconds``."""
    with anyio.move_on_after(seconds):
        return await call()
    raise RequestTimeoutError(
        f"{what} did not complete within {seconds:g} s; it was cancelled (a write that had "
        "been sent may or may not have been applied)"
    )


class _Appends:
    """``append`` and ``append_batch``, blocking, for :class:`Client` and :class:`Producer`:
    one pair of signatures for both, each call made on the async twin :meth:`_appends` names."""

    def _appends(self) -> tuple[Client, _async.Client | _async.Producer]:
        """The blocking client that makes the calls, and the async client or producer called."""
        raise NotImplementedError

    def append(
        self,
        queue_id: str,
        data: Any,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = DEFAULT,
    ) -> int:
        """See :meth:`trio_broker.Client.append` (of a :class:`Producer`,
        :meth:`trio_broker.Producer.append`: exactly once)."""
        client, target = self._appends()
        call = functools.partial(target.append, queue_id, data, headers=headers)
        return client._call(timeout, "append", call)

    def append_batch(
        self,
        queue_id: str,
        values: Sequence[Any],
        *,
        headers: Sequence[dict[str, str] | None] | None = None,
        timeout: float | None = DEFAULT,
    ) -> list[int]:
        """See :meth:`trio_broker.Client.append_batch` (of a :class:`Producer`,
        :meth:`trio_broker.Producer.append_batch`: exactly once)."""
        client, target = self._appends()
        call = functools.partial(target.append_batch, queue_id, values, headers=headers)
        return client._call(timeout, "append_batch", call)


class Client(_Appends):
    """The blocking face of :class:`trio_broker.Client`; create it with :func:`connect`."""

    def __init__(
        self,
        portal: anyio.from_thread.BlockingPortal,
        client: _async.Client,
        timeout: float | None,
    ) -> None:
        self._portal = portal
        self._client = client
        self._timeout = timeout
        self._closed = False

    def __repr__(self) -> str:
        return f"<trio_broker.sync Client {self.client_id}>"

    def _appends(self) -> tuple[Client, _async.Client]:
        return self, self._client

    def _timeout_of(self, timeout: float | None) -> float | None:
        """A call's ``timeout``, checked: ``DEFAULT`` is the client's."""
        if timeout is DEFAULT:
            timeout = self._timeout
        _check_timeout(timeout)
        return timeout

    def _call(self, timeout: float | None, what: str, call: Callable[[], Awaitable[T]]) -> T:
        timeout = self._timeout_of(timeout)
        future = self._on_portal(lambda: self._portal.start_task_soon(_within, timeout, what, call))
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted here (KeyboardInterrupt): cancel it there too
            raise

    def _run_sync(self, fn: Callable[[], T]) -> T:
        return self._on_portal(lambda: self._portal.call(fn))

    def _on_portal(self, use: Callable[[], T]) -> T:
        """``use()`` of the event-loop thread's portal, refused once the client is closed."""
        if self._closed:
            raise ClientClosedError("this client is closed")
        try:
            return use()
        except RuntimeError:
            if self._closed:  # the portal stopped meanwhile (the client is being closed)
                raise ClientClosedError("this client is closed") from None
            raise  # say, a call from the client's own event-loop thread

    @property
    def client_id(self) -> str:
        """The id that names this client's read positions."""
        return self._client.client_id

    @property
    def clusters(self) -> tuple[str, ...]:
        """Ids of the clusters discovered so far (the first is the default)."""
        return self._run_sync(lambda: self._client.clusters)

    def topology(self, cluster_id: str | None = None) -> Topology:
        """The last known topology of a cluster, without asking."""
        return self._run_sync(lambda: self._client.topology(cluster_id))

    def statistics(self) -> ClientStatistics:
        """A snapshot of the client's counters."""
        return self._run_sync(self._client.statistics)

    def cluster_query(
        self,
        seed: str | tuple[str, int] | None = None,
        *,
        cluster_id: str | None = None,
        details: bool = False,
        timeout: float | None = DEFAULT,
    ) -> Topology:
        """See :meth:`trio_broker.Client.cluster_query`."""
        call = functools.partial(
            self._client.cluster_query, seed, cluster_id=cluster_id, details=details
        )
        return self._call(timeout, "cluster_query", call)

    def create_queue(
        self,
        cluster_id: str | None = None,
        *,
        name: str | None = None,
        max_messages: int | None = None,
        max_age: float | None = None,
        delete_acknowledged: bool = False,
        timeout: float | None = DEFAULT,
    ) -> str:
        """See :meth:`trio_broker.Client.create_queue`."""
        call = functools.partial(
            self._client.create_queue,
            cluster_id,
            name=name,
            max_messages=max_messages,
            max_age=max_age,
            delete_acknowledged=delete_acknowledged,
        )
        return self._call(timeout, "create_queue", call)

    def set_retention(
        self,
        queue_id: str,
        *,
        max_messages: int | None = None,
        max_age: float | None = None,
        delete_acknowledged: bool = False,
        timeout: float | None = DEFAULT,
    ) -> Retention:
        """See :meth:`trio_broker.Client.set_retention`."""
        call = functools.partial(
            self._client.set_retention,
            queue_id,
            max_messages=max_messages,
            max_age=max_age,
            delete_acknowledged=delete_acknowledged,
        )
        return self._call(timeout, "set_retention", call)

    def resolve_queue(
        self, name: str, cluster_id: str | None = None, *, timeout: float | None = DEFAULT
    ) -> str:
        """See :meth:`trio_broker.Client.resolve_queue`."""
        call = functools.partial(self._client.resolve_queue, name, cluster_id)
        return self._call(timeout, "resolve_queue", call)

    def delete_queue(
        self, queue_id: str, *, force: bool = False, timeout: float | None = DEFAULT
    ) -> None:
        """See :meth:`trio_broker.Client.delete_queue`."""
        call = functools.partial(self._client.delete_queue, queue_id, force=force)
        return self._call(timeout, "delete_queue", call)

    def forget_position(self, queue_id: str, *, timeout: float | None = DEFAULT) -> bool:
        """See :meth:`trio_broker.Client.forget_position`."""
        call = functools.partial(self._client.forget_position, queue_id)
        return self._call(timeout, "forget_position", call)

    def delete_group(
        self, queue_id: str, group: str, *, force: bool = False, timeout: float | None = DEFAULT
    ) -> None:
        """See :meth:`trio_broker.Client.delete_group`."""
        call = functools.partial(self._client.delete_group, queue_id, group, force=force)
        return self._call(timeout, "delete_group", call)

    @contextmanager
    def consumer_group(
        self,
        queue_id: str,
        group: str,
        *,
        visibility_timeout: float | None = None,
        max_deliveries: int | None = None,
        dead_letter_queue: str | None = None,
        max_in_flight: int | None = None,
        prefetch: int = 1,
        wait: float = 1.0,
        timeout: float | None = DEFAULT,
    ) -> Iterator[GroupConsumer]:
        """See :meth:`trio_broker.Client.consumer_group`: ``with client.consumer_group(q,
        "workers") as worker: for message in worker: ... message.ack()``. Leaving the loop
        acknowledges nothing: what was received and not acknowledged comes again after its
        lease runs out."""
        call = functools.partial(
            self._client._join_group,
            queue_id,
            group,
            visibility_timeout=visibility_timeout,
            max_deliveries=max_deliveries,
            dead_letter_queue=dead_letter_queue,
            max_in_flight=max_in_flight,
            prefetch=prefetch,
            wait=wait,
        )
        timeout = self._timeout_of(timeout)
        yield GroupConsumer(self, self._call(timeout, "consumer_group", call), timeout, wait)

    def read(self, queue_id: str, *, timeout: float | None = DEFAULT) -> Message | None:
        """See :meth:`trio_broker.Client.read`."""
        return self._call(timeout, "read", functools.partial(self._client.read, queue_id))

    def read_batch(
        self,
        queue_id: str,
        max_messages: int = 100,
        *,
        peek: bool = False,
        wait: float | None = None,
        wait_ms: int | None = None,
        timeout: float | None = DEFAULT,
    ) -> list[Message]:
        """See :meth:`trio_broker.Client.read_batch`."""
        call = functools.partial(
            self._client.read_batch, queue_id, max_messages, peek=peek, wait=wait, wait_ms=wait_ms
        )
        return self._call(timeout, "read_batch", call)

    def ack(self, queue_id: str, sequence_num: int, *, timeout: float | None = DEFAULT) -> int:
        """See :meth:`trio_broker.Client.ack`."""
        return self._call(
            timeout, "ack", functools.partial(self._client.ack, queue_id, sequence_num)
        )

    def seek(
        self,
        queue_id: str,
        next_sequence_num: int | None = None,
        *,
        to: str | None = None,
        timeout: float | None = DEFAULT,
    ) -> int:
        """See :meth:`trio_broker.Client.seek`."""
        call = functools.partial(self._client.seek, queue_id, next_sequence_num, to=to)
        return self._call(timeout, "seek", call)

    def consume(
        self,
        queue_id: str,
        *,
        max_messages: int = 100,
        wait: float = 1.0,
        ack: bool = False,
        timeout: float | None = DEFAULT,
    ) -> Consumer:
        """Every message of the queue from this client's position on, as they arrive: an
        endless iterator (leave it with ``break``). Each poll waits up to ``wait`` seconds for a
        message on the broker, and must finish within ``timeout`` seconds more. A timeout
        raises from the iterator; iterating again continues.

        ``ack`` as in :meth:`trio_broker.Client.consume`: with ``ack=True`` (at least once), a
        batch is acknowledged when the loop asks for the message after it, and, used as
        ``with client.consume(q, ack=True) as messages: for message in messages:``, the
        block's clean end (``break`` included) acknowledges every message the loop received;
        an exception out of the block acknowledges nothing more (what the loop was given since
        the last acknowledgement comes again). A bare ``for`` left with ``break`` cannot be
        told from one left by an exception, so it acknowledges nothing more either."""
        if ack not in (True, False):
            raise TypeError("ack must be a bool")
        timeout = self._timeout_of(timeout)
        consumer = self._client.consume(queue_id, max_messages=max_messages, wait=wait, ack=ack)
        return Consumer(self, consumer, wait, timeout)

    def producer(
        self, producer_id: str | None = None, *, next_seq: int = 1, epoch: int | None = None
    ) -> Producer:
        """See :meth:`trio_broker.Client.producer`."""
        return Producer(self, self._client.producer(producer_id, next_seq=next_seq, epoch=epoch))

    def list_queues(
        self,
        cluster_id: str | None = None,
        *,
        max_queues: int = 100,
        after: str | None = None,
        timeout: float | None = DEFAULT,
    ) -> QueueList:
        """See :meth:`trio_broker.Client.list_queues`."""
        call = functools.partial(
            self._client.list_queues, cluster_id, max_queues=max_queues, after=after
        )
        return self._call(timeout, "list_queues", call)

    def remove_member(
        self, broker_id: str, cluster_id: str | None = None, *, timeout: float | None = DEFAULT
    ) -> None:
        """See :meth:`trio_broker.Client.remove_member`."""
        call = functools.partial(self._client.remove_member, broker_id, cluster_id)
        return self._call(timeout, "remove_member", call)

    def transfer_leadership(
        self,
        broker_id: str | None = None,
        cluster_id: str | None = None,
        *,
        timeout: float | None = DEFAULT,
    ) -> LeadershipTransferred:
        """See :meth:`trio_broker.Client.transfer_leadership`."""
        call = functools.partial(self._client.transfer_leadership, broker_id, cluster_id)
        return self._call(timeout, "transfer_leadership", call)

    def add_member(
        self,
        host: str,
        port: int,
        cluster_id: str | None = None,
        *,
        timeout: float | None = DEFAULT,
    ) -> MemberAdded:
        """See :meth:`trio_broker.Client.add_member`."""
        call = functools.partial(self._client.add_member, host, port, cluster_id)
        return self._call(timeout, "add_member", call)

    def take_snapshot(
        self,
        broker: str | tuple[str, int] | None = None,
        *,
        cluster_id: str | None = None,
        timeout: float | None = DEFAULT,
    ) -> list[SnapshotTaken]:
        """See :meth:`trio_broker.Client.take_snapshot`."""
        call = functools.partial(self._client.take_snapshot, broker, cluster_id=cluster_id)
        return self._call(timeout, "take_snapshot", call)


class Producer(_Appends):
    """The blocking face of :class:`trio_broker.Producer` (see :meth:`Client.producer`)."""

    def __init__(self, client: Client, producer: _async.Producer) -> None:
        self._client = client
        self._producer = producer

    @property
    def producer_id(self) -> str:
        """The id the cluster recognises this producer's appends by."""
        return self._producer.producer_id

    @property
    def epoch(self) -> int | None:
        """See :attr:`trio_broker.Producer.epoch`."""
        return self._producer.epoch

    @property
    def last_duplicate(self) -> bool:
        """See :attr:`trio_broker.Producer.last_duplicate`."""
        return self._producer.last_duplicate

    @property
    def duplicates(self) -> int:
        """See :attr:`trio_broker.Producer.duplicates`."""
        return self._producer.duplicates

    def _appends(self) -> tuple[Client, _async.Producer]:
        return self._client, self._producer


class Consumer:
    """The blocking face of :class:`trio_broker.Consumer` (see :meth:`Client.consume`): an
    iterator, and a context manager whose clean end acknowledges (with ``ack=True``). The
    batching and acknowledging are the async consumer's; each step runs on the client's loop."""

    def __init__(
        self, client: Client, consumer: _work.Consumer, wait: float, timeout: float | None
    ) -> None:
        self._client = client
        self._consumer = consumer
        self._poll_timeout = _poll_timeout(timeout, wait)
        self._timeout = timeout

    @property
    def queue_id(self) -> str:
        """The queue's id."""
        return self._consumer.queue_id

    def __iter__(self) -> Consumer:
        return self

    def __next__(self) -> Message:
        return self._client._call(self._poll_timeout, "consume", self._consumer.__anext__)

    def acknowledge(self) -> None:
        """With ``ack=True``: acknowledge every message handed to the loop so far."""
        self._client._call(self._timeout, "ack", self._consumer.acknowledge)

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        end = functools.partial(self._consumer.__aexit__, exc_type, None, None)
        self._client._call(self._timeout, "consume", end)


class GroupConsumer:
    """The blocking face of :class:`trio_broker.GroupConsumer`: iterate over it for the
    group's messages (each a :class:`GroupMessage`)."""

    def __init__(
        self, client: Client, consumer: _work.GroupConsumer, timeout: float | None, wait: float
    ) -> None:
        self._client = client
        self._consumer = consumer
        self._poll_timeout = _poll_timeout(timeout, wait)

    @property
    def member(self) -> str:
        """This worker's member id."""
        return self._consumer.member

    @property
    def queue_id(self) -> str:
        """The queue's id."""
        return self._consumer.queue_id

    @property
    def group(self) -> str:
        """The group's name."""
        return self._consumer.group

    def receive(self, max_messages: int = 1) -> list[GroupMessage]:
        """See :meth:`trio_broker.GroupConsumer.receive`."""
        call = functools.partial(self._consumer.receive, max_messages)
        received = self._client._call(self._poll_timeout, "receive", call)
        return [GroupMessage(self._client, m) for m in received]

    def __iter__(self) -> Iterator[GroupMessage]:
        """The group's messages, leased ``prefetch`` at a time, as the async worker's."""
        while True:
            yield from self.receive(self._consumer.prefetch)


class GroupMessage:
    """The blocking face of :class:`trio_broker.GroupMessage`."""

    def __init__(self, client: Client, message: _work.GroupMessage) -> None:
        self._client = client
        self._message = message
        self.sequence_num = message.sequence_num
        """See :class:`trio_broker.GroupMessage`."""
        self.data = message.data
        self.headers = message.headers
        self.delivery_count = message.delivery_count

    def ack(self, *, timeout: float | None = DEFAULT) -> bool:
        """See :meth:`trio_broker.GroupMessage.ack`."""
        return self._client._call(timeout, "ack", self._message.ack)

    def nack(
        self, *, delay: float = 0.0, error: str | None = None, timeout: float | None = DEFAULT
    ) -> bool:
        """See :meth:`trio_broker.GroupMessage.nack`."""
        call = functools.partial(self._message.nack, delay=delay, error=error)
        return self._client._call(timeout, "nack", call)

    def extend(
        self, visibility_timeout: float | None = None, *, timeout: float | None = DEFAULT
    ) -> bool:
        """See :meth:`trio_broker.GroupMessage.extend`."""
        call = functools.partial(self._message.extend, visibility_timeout)
        return self._client._call(timeout, "extend", call)


@contextmanager
def connect(
    seeds: Iterable[str | tuple[str, int]] | str,
    *,
    timeout: float | None = None,
    client_id: str | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    max_in_flight: int = _async.DEFAULT_MAX_IN_FLIGHT,
    ssl_context: ssl.SSLContext | None = None,
    token: str | None = None,
    cluster_secret: bytes | None = None,
    backend: str = "trio",
) -> Iterator[Client]:
    """Start the client's event-loop thread, connect as :func:`trio_broker.connect` does, and
    yield a blocking :class:`Client`; on leaving the block, close it and join the thread.

    ``timeout`` (seconds) bounds the connection (discovery) and is the default ``timeout`` of
    every call; None waits as long as it takes. ``backend`` is the event loop run in that
    thread (``"trio"`` or ``"asyncio"``); the other arguments are :func:`trio_broker.connect`'s.
    """
    _check_timeout(timeout)
    opener = _async.open_client(
        seeds,
        client_id=client_id,
        max_frame=max_frame,
        max_in_flight=max_in_flight,
        ssl_context=ssl_context,
        token=token,
        cluster_secret=cluster_secret,
        discovery_timeout=timeout,
    )
    with (
        anyio.from_thread.start_blocking_portal(backend) as portal,
        contextlib.ExitStack() as stack,
    ):
        portal.call(_name_thread)
        try:
            async_client = stack.enter_context(portal.wrap_async_context_manager(opener))
        except TimeoutError as exc:
            if isinstance(exc, RequestTimeoutError):
                raise
            raise RequestTimeoutError(f"connect did not complete within {timeout:g} s") from None
        client = Client(portal, async_client, timeout)
        stack.callback(setattr, client, "_closed", True)  # first thing on the way out
        yield client


def _name_thread() -> None:
    threading.current_thread().name = f"trio_broker.sync-{threading.get_ident()}"
