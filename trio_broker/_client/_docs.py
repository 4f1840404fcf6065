"""Docstrings for exported classes whose own modules describe only their fields.

The wire data classes live in ``trio_broker._protocol``, where they describe fields of the
wire; a user meets them as return values of :class:`~trio_broker.Client` methods, exported from
``trio_broker``, and ``help()`` should say what they are (so for the broker's
``BrokerStatistics``). A class that has its own docstring keeps it.
"""

from __future__ import annotations

from .._protocol import BrokerInfo, LeadershipTransferred, MemberAdded, Message, SnapshotTaken
from .._protocol._messages import ClientLag, QueueInfo, QueueList
from .._runtime import BrokerStatistics

DOCSTRINGS: dict[type, str] = {
    BrokerInfo: "One member of a cluster, as ``CLUSTER_QUERY`` describes it (see ``Topology``).",
    Message: (
        "One message of a queue: its ``sequence_num`` (1 for the first message appended) and "
        "``data``, the JSON value exactly as it was appended, and its ``headers`` (a dict of "
        "strings, None when it was appended without any)."
    ),
    QueueList: (
        "One page of :meth:`Client.list_queues`: ``queues`` and ``next_after``, the value "
        "of ``after`` for the next page (None after the last)."
    ),
    QueueInfo: "One queue in :meth:`Client.list_queues`: its length, retention and readers.",
    ClientLag: "One reader of a queue: its next sequence number and how far behind it is.",
    LeadershipTransferred: "The answer to :meth:`Client.transfer_leadership`: who leads now.",
    SnapshotTaken: "One broker's answer to :meth:`Client.take_snapshot`.",
    MemberAdded: "The answer to :meth:`Client.add_member`: the learner added.",
    BrokerStatistics: "A snapshot of a running broker's state and counters (``statistics()``).",
}


def document_wire_classes() -> None:
    for cls, doc in DOCSTRINGS.items():
        if not cls.__doc__:
            cls.__doc__ = doc
