"""The client library, on anyio: the same code serves trio and asyncio programs.

Modules: ``_common`` (addresses, public data classes, checks before sending), ``_connection``
(one pipelined connection), ``_routing`` (leaders, topology, retries), ``_client`` (the
queue operations and :func:`connect`), ``_producer`` (idempotent producers), ``_admin`` (the
clusters' topologies and the operator's commands), ``_work`` (consumer groups and consumers).
:mod:`trio_broker.client` is the public face.
"""

from ._client import DEFAULT_MAX_IN_FLIGHT, Client, Producer, connect
from ._common import (
    Address,
    BrokerUnreachableError,
    ClientClosedError,
    ClientStatistics,
    Topology,
    parse_address,
)
from ._work import Consumer, GroupConsumer, GroupMessage

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "Address",
    "BrokerUnreachableError",
    "Client",
    "ClientClosedError",
    "ClientStatistics",
    "Consumer",
    "GroupConsumer",
    "GroupMessage",
    "Producer",
    "Topology",
    "connect",
    "parse_address",
]
