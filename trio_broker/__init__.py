"""trio_broker: a replicated, durable message queue for Trio programs, with clients for trio,
asyncio and plain synchronous Python.

Run a broker inside your own trio program::

    async with trio_broker.open_broker(trio_broker.BrokerConfig(data_dir="data")) as broker:
        ...

or talk to brokers, from trio or asyncio alike::

    async with trio_broker.connect(["127.0.0.1:9001"]) as client:
        queue = await client.create_queue()
        await client.append(queue, {"hello": "world"})
        message = await client.read(queue)

or from a script without an event loop (:mod:`trio_broker.sync`)::

    with trio_broker.sync.connect(["127.0.0.1:9001"]) as client:
        client.append(queue, {"hello": "world"}, timeout=5)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import (
    BadRequestError,
    BrokerError,
    ErrorCode,
    GroupInUseError,
    GroupNotFoundError,
    InternalError,
    LimitReachedError,
    NotLeaderError,
    OutcomeUnknownError,
    OutOfOrderSequenceError,
    ProducerFencedError,
    ProtocolError,
    QueueInUseError,
    QueueNotFoundError,
    RequestTimeoutError,
    SequenceTooOldError,
    TooLargeError,
    UnauthorizedError,
    UnavailableError,
    UnknownOperationError,
    WrongClusterError,
)
from ._lazy import lazy_names
from ._protocol import (
    BrokerInfo,
    LeadershipTransferred,
    MemberAdded,
    Message,
    Retention,
    SnapshotTaken,
)
from ._protocol._admin_messages import ClusterSettingsSet
from ._protocol._messages import (
    ClientLag,
    DrainState,
    MoveDone,
    QueueInfo,
    QueueList,
    Rebalanced,
)

if TYPE_CHECKING:
    from . import sync
    from ._client import (
        Address,
        BrokerUnreachableError,
        Client,
        ClientClosedError,
        ClientStatistics,
        Consumer,
        GroupConsumer,
        GroupMessage,
        Producer,
        Topology,
        connect,
    )
    from ._runtime import (
        Broker,
        BrokerConfig,
        BrokerStatistics,
        IdentityMismatch,
        JoinFailed,
        open_broker,
        serve_broker,
    )
    from ._storage import DataDirInUse, StorageFailed

_LAZY = {
    "Address": "._client",
    "BrokerUnreachableError": "._client",
    "Client": "._client",
    "ClientClosedError": "._client",
    "ClientStatistics": "._client",
    "Consumer": "._client",
    "GroupConsumer": "._client",
    "GroupMessage": "._client",
    "Producer": "._client",
    "Topology": "._client",
    "connect": "._client",
    "Broker": "._runtime",
    "BrokerConfig": "._runtime",
    "BrokerStatistics": "._runtime",
    "IdentityMismatch": "._runtime",
    "JoinFailed": "._runtime",
    "open_broker": "._runtime",
    "serve_broker": "._runtime",
    "DataDirInUse": "._storage",
    "StorageFailed": "._storage",
}
"""The client's and the broker's names, loaded when first used (PEP 562): a client program, or
a command-line client command, does not import the broker, its storage and its metrics; a
broker (``python -m trio_broker node``) does not import the client and anyio."""


__getattr__, __dir__ = lazy_names(globals(), _LAZY, submodules=("sync",))


__version__ = "0.1.0"

__all__ = [
    "Address",
    "BadRequestError",
    "Broker",
    "BrokerConfig",
    "BrokerError",
    "BrokerInfo",
    "BrokerStatistics",
    "BrokerUnreachableError",
    "Client",
    "ClientClosedError",
    "ClientLag",
    "ClientStatistics",
    "ClusterSettingsSet",
    "Consumer",
    "DataDirInUse",
    "DrainState",
    "ErrorCode",
    "GroupConsumer",
    "GroupInUseError",
    "GroupMessage",
    "GroupNotFoundError",
    "IdentityMismatch",
    "InternalError",
    "JoinFailed",
    "LeadershipTransferred",
    "LimitReachedError",
    "MemberAdded",
    "Message",
    "MoveDone",
    "NotLeaderError",
    "OutOfOrderSequenceError",
    "OutcomeUnknownError",
    "Producer",
    "ProducerFencedError",
    "ProtocolError",
    "QueueInUseError",
    "QueueInfo",
    "QueueList",
    "QueueNotFoundError",
    "Rebalanced",
    "RequestTimeoutError",
    "Retention",
    "SequenceTooOldError",
    "SnapshotTaken",
    "StorageFailed",
    "TooLargeError",
    "Topology",
    "UnauthorizedError",
    "UnavailableError",
    "UnknownOperationError",
    "WrongClusterError",
    "connect",
    "open_broker",
    "serve_broker",
    "sync",
]
