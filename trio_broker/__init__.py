"""trio_broker: a replicated, durable message queue for Trio programs.

Run a broker inside your own trio program::

    async with trio_broker.open_broker(trio_broker.BrokerConfig(data_dir="data")) as broker:
        ...

or talk to brokers::

    async with trio_broker.connect(["127.0.0.1:9001"]) as client:
        queue = await client.create_queue()
        await client.append(queue, {"hello": "world"})
        message = await client.read(queue)
"""

from ._errors import (
    BrokerError,
    ErrorCode,
    NotLeaderError,
    OutcomeUnknownError,
    ProtocolError,
    QueueNotFoundError,
)
from ._runtime import (
    Broker,
    BrokerConfig,
    BrokerStatistics,
    IdentityMismatch,
    open_broker,
    serve_broker,
)
from ._storage import DataDirInUse
from .client import Client, ClientStatistics, Topology, connect

__version__ = "0.1.0"

__all__ = [
    "Broker",
    "BrokerConfig",
    "BrokerError",
    "BrokerStatistics",
    "Client",
    "ClientStatistics",
    "DataDirInUse",
    "ErrorCode",
    "IdentityMismatch",
    "NotLeaderError",
    "OutcomeUnknownError",
    "ProtocolError",
    "QueueNotFoundError",
    "Topology",
    "connect",
    "open_broker",
    "serve_broker",
]
