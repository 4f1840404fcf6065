"""What every part of the client shares: addresses, the public data classes, the checks made
before anything is sent, and the client's own exceptions."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

import anyio
import attrs
import trio

from .._address import Address as Address
from .._address import format_address
from .._address import parse_address as parse_address
from .._errors import ErrorCode, ProtocolError, UnavailableError
from .._protocol import BrokerInfo, Retention, converter
from .._protocol._codec import OPERATION_NAMES

T = TypeVar("T")

fmt_address = format_address


@attrs.frozen
class Topology:
    """One cluster as a broker described it in its answer to ``CLUSTER_QUERY``."""

    cluster_id: str
    cluster_version: int
    brokers: tuple[BrokerInfo, ...]
    leader: BrokerInfo | None
    """The member the answering broker takes for the leader; None during an election."""
    self_role: str | None = None
    """Role of the broker that answered (``"leader"`` or ``"replica"``)."""
    self_id: str | None = None
    """Id of the broker that answered, when it said so."""


@attrs.frozen
class ClientStatistics:
    """A snapshot of a client's counters; see :meth:`Client.statistics`."""

    open_connections: int
    requests_in_flight: int
    """Requests queued or written and not yet answered, over all connections."""
    requests_sent: int
    responses_received: int
    responses_discarded: int
    """Responses that arrived for calls that had been cancelled."""
    retries: int
    topology_refreshes: int
    known_clusters: int


class BrokerUnreachableError(UnavailableError):
    """None of the seed brokers answered ``CLUSTER_QUERY`` when the client connected.

    ``errors`` lists ``(address, reason)`` for every seed tried. The code is ``UNAVAILABLE``.
    """

    def __init__(self, errors: Sequence[tuple[Address, str]]) -> None:
        detail = "; ".join(f"{fmt_address(address)}: {reason}" for address, reason in errors)
        super().__init__(ErrorCode.UNAVAILABLE, f"cannot reach any seed broker ({detail})")
        self.errors = list(errors)


class ClientClosedError(anyio.ClosedResourceError, trio.ClosedResourceError):
    """A call on a client whose ``async with connect(...)`` block (or ``with`` block, for the
    synchronous client) has ended. It is both :class:`anyio.ClosedResourceError` and
    :class:`trio.ClosedResourceError`, so code written for either keeps catching it."""


def structure(response: dict[str, Any], cls: type[T]) -> T:
    try:
        return converter.structure(response, cls)
    except Exception as exc:
        raise ProtocolError(f"unexpected response {response!r:.200}: {exc}") from None


def wire_name(request: Any) -> str:
    return OPERATION_NAMES.get(type(request), type(request).__name__)


def wait_in_ms(
    wait: float | None, wait_ms: int | None, *, caller: str, default: float | None
) -> int | None:
    """The wire's ``wait_ms`` from a duration in seconds (``wait``), or from the deprecated
    ``wait_ms`` keyword, which still works but warns."""
    if wait_ms is not None:
        if wait is not None:
            raise TypeError(f"{caller}() takes wait (seconds) or wait_ms, not both")
        warnings.warn(
            f"{caller}(wait_ms=...) is deprecated: pass wait= in seconds, like every duration",
            DeprecationWarning,
            stacklevel=3,
        )
        if isinstance(wait_ms, bool) or not isinstance(wait_ms, int):
            raise TypeError(f"wait_ms must be an int, not {type(wait_ms).__name__}")
        if wait_ms < 0:
            raise ValueError(f"wait_ms must not be negative, not {wait_ms}")
        return wait_ms
    if wait is None:
        wait = default
    if wait is None:
        return None
    if isinstance(wait, bool) or not isinstance(wait, int | float):
        raise TypeError(f"wait must be a number of seconds, not {type(wait).__name__}")
    if not math.isfinite(wait) or wait < 0:
        raise ValueError(f"wait must be a finite, non-negative number of seconds, not {wait}")
    return round(wait * 1000)


def retention_of(
    max_messages: int | None, max_age: float | None, delete_acknowledged: bool
) -> Retention:
    """A retention policy from the client's keywords; mistakes raise before anything is sent
    (the broker checks the limits too)."""
    if max_messages is not None and (
        isinstance(max_messages, bool) or not isinstance(max_messages, int)
    ):
        raise TypeError(f"max_messages must be an int, not {type(max_messages).__name__}")
    if max_messages is not None and max_messages < 1:
        raise ValueError(f"max_messages must be at least 1, not {max_messages}")
    if not isinstance(delete_acknowledged, bool):
        raise TypeError("delete_acknowledged must be a bool")
    max_age_ms = None
    if max_age is not None:
        if isinstance(max_age, bool) or not isinstance(max_age, int | float):
            raise TypeError(f"max_age must be a number of seconds, not {type(max_age).__name__}")
        if not math.isfinite(max_age) or max_age * 1000 < 1:
            raise ValueError(f"max_age must be at least 0.001 seconds, not {max_age}")
        max_age_ms = round(max_age * 1000)
    return Retention(max_messages, max_age_ms, delete_acknowledged)


def check_queue_id(queue_id: Any) -> None:
    if not isinstance(queue_id, str):
        raise TypeError(f"a queue id is a string, got {type(queue_id).__name__}")


def check_json_value(value: Any) -> None:
    """Refuse what has no exact JSON form, rather than let the encoder change it.

    The shared converter would turn a set into a list and an integer key into a string, and
    orjson writes NaN as null: none of these would come back from a READ as they went in.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, str | int):
            continue  # bool is an int; the encoder refuses integers beyond 64 bits
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{item!r} is not a JSON value")
        elif isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    raise TypeError(f"JSON object keys are strings, got {type(key).__name__}")
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            raise TypeError(f"{type(item).__name__} is not a JSON value")
