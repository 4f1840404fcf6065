"""The decisions, as pure state machines: no trio, no sockets, no apsw, no clock.

Everything here is driven by method calls and returns what to do; the runtime (``_runtime``)
and the simulator (``trio_broker.testing``) execute those effects.
"""

from ._commands import (
    AppendMessage,
    BrokerAddressSet,
    Command,
    CommandRejected,
    CreateQueue,
    MessageAppended,
    MessageRead,
    QueueCreated,
    ReadNext,
    Result,
    RetentionPolicy,
    SetBrokerAddress,
)
from ._queues import QueueState

__all__ = [
    "AppendMessage",
    "BrokerAddressSet",
    "Command",
    "CommandRejected",
    "CreateQueue",
    "MessageAppended",
    "MessageRead",
    "QueueCreated",
    "QueueState",
    "ReadNext",
    "Result",
    "RetentionPolicy",
    "SetBrokerAddress",
]
