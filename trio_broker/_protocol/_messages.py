"""Client-facing messages of the wire contract, as frozen attrs classes.

The classes carry no serialization code: the converter in ``_codec`` maps them to and from the
wire, with wire names written down there, never derived from class names.
"""

from __future__ import annotations

from typing import Any

import attrs

# -- requests ------------------------------------------------------------------------------------


@attrs.frozen
class ClusterQuery:
    client_id: str | None = None
    cluster_id: str | None = None


@attrs.frozen
class CreateQueue:
    client_id: str | None = None


@attrs.frozen
class Append:
    queue_name: str
    data: Any
    """Any JSON value (already checked by the codec); stored and returned unchanged."""
    client_id: str | None = None


@attrs.frozen
class Read:
    queue_name: str
    client_id: str


Request = ClusterQuery | CreateQueue | Append | Read


# -- responses -----------------------------------------------------------------------------------


@attrs.frozen
class BrokerInfo:
    broker_id: str
    host: str
    port: int
    role: str
    """``"leader"`` or ``"replica"``."""
    status: str
    """``"active"`` or ``"inactive"``."""


@attrs.frozen
class ClusterTopology:
    cluster_id: str
    cluster_version: int
    self_role: str
    brokers: list[BrokerInfo]
    self_id: str | None = None
    leader_id: str | None = None


@attrs.frozen
class QueueCreated:
    queue_id: str


@attrs.frozen
class Appended:
    sequence_num: int


@attrs.frozen
class Message:
    sequence_num: int
    data: Any


@attrs.frozen
class NoMessages:
    pass


Response = ClusterTopology | QueueCreated | Appended | Message | NoMessages
