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
from ._runtime import (
    Broker,
    BrokerConfig,
    BrokerStatistics,
    IdentityMismatch,
    JoinFailed,
    open_broker,
    serve_broker,
)
from ._storage import DataDirInUse

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
