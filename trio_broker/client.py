"""The client library, for trio and asyncio programs alike (it runs on anyio).

::

    async with trio_broker.connect(["127.0.0.1:9001"]) as client:
        queue_id = await client.create_queue()
        await client.append(queue_id, {"any": ["json", 1.5, True, None]})
        message = await client.read(queue_id)

The same code runs under ``trio.run`` and under ``asyncio.run``; scripts without an event loop
use :mod:`trio_broker.sync`.

One :class:`Client` keeps one persistent connection per broker, opened when first needed, and
pipelines on it: any number of tasks may call the client at once; each connection has one writer
task (which writes requests in order, several per write when they queue up) and one reader
task (which matches responses to requests in the same order). A call that is cancelled leaves its
place in that order; its response is read and discarded, so the other calls on the connection are
unaffected.

Routing follows the wire contract: a queue id names its cluster, and requests for a queue go to
the leader of that cluster. When the leader moves (``NOT_LEADER``, or a connection that cannot be
opened), the client refreshes its view of the cluster and retries with a bounded backoff until the
caller's own deadline; the library has no timeouts of its own (wrap calls in
:func:`anyio.fail_after`, :func:`trio.fail_after` or :func:`asyncio.timeout`). A request that may
have reached a broker is never sent again, except ``CLUSTER_QUERY``, which changes nothing: an
``APPEND``, ``READ`` or ``CREATE_QUEUE`` whose connection is lost after it was written raises
:class:`~trio_broker.OutcomeUnknownError`, and so does a broker's ``UNAVAILABLE`` error marked
``"outcome": "unknown"``. Errors that say the request was not applied (``NOT_LEADER``, other
``UNAVAILABLE`` errors) are retried; every other error is raised as the exception of its code
(:func:`~trio_broker._errors.error_from_wire`).

This module keeps the names it always had; the code lives in ``trio_broker._client``.
"""

from ._client import (
    DEFAULT_MAX_IN_FLIGHT,
    BrokerUnreachableError,
    Client,
    ClientClosedError,
    ClientStatistics,
    Producer,
    Topology,
    connect,
    parse_address,
)
from ._protocol import BrokerInfo, Message, Retention

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "BrokerInfo",
    "BrokerUnreachableError",
    "Client",
    "ClientClosedError",
    "ClientStatistics",
    "Message",
    "Producer",
    "Retention",
    "Topology",
    "connect",
    "parse_address",
]
