"""Client requests to queue commands, and command results to answers.

The checks here are those that need the broker's configuration (sizes, limits); the codec has
already checked types. Every refusal is an answer that changed nothing.
"""

from __future__ import annotations

from typing import Any

from .. import _core
from .._core import _commands as cmd
from .._errors import BrokerError, ErrorCode, ProtocolError
from .._protocol import _messages as m
from .._protocol._codec import client_value, client_values
from .._storage._store import QueueRow
from ._answer import retention_wire
from ._config import BrokerConfig

MAX_BATCH_VALUES = 1000
MAX_READ_MESSAGES = 1000
MAX_WAIT_MS = 60_000
MAX_LIST_QUEUES = 1000
DEFAULT_LIST_QUEUES = 100
MAX_LISTED_CLIENTS = 1000
_PER_MESSAGE_OVERHEAD = 64
"""Bytes a message adds to a batch answer besides its data (sequence number, punctuation)."""


def _bad(message: str) -> BrokerError:
    return BrokerError(ErrorCode.BAD_REQUEST, message)


def _producer(request: m.Append | m.AppendBatch) -> tuple[str | None, int | None] | BrokerError:
    pid, seq = request.producer_id, request.producer_seq
    if (pid is None) != (seq is None):
        return _bad("producer_id and producer_seq go together")
    if pid is not None and (not pid or seq < 0):  # type: ignore[operator]
        return _bad("producer_id must be non-empty and producer_seq at least 0")
    return pid, seq


def too_large(size: int, limit: int, what: str) -> BrokerError:
    return BrokerError(
        ErrorCode.TOO_LARGE, f"{what} of {size} bytes is larger than the maximum of {limit} bytes"
    )


def append_command(
    request: m.Append | m.AppendBatch, config: BrokerConfig, *, appended_ms: int | None = None
) -> cmd.AppendMessage | cmd.AppendBatch | BrokerError:
    """The command of an APPEND or APPEND_BATCH, stamped with ``appended_ms`` (the leader's
    clock; built once, not evolved afterwards), or the refusal."""
    if request.producer_id is None and request.producer_seq is None:
        producer: tuple[str | None, int | None] | BrokerError = (None, None)  # the usual case
    else:
        producer = _producer(request)
    if isinstance(producer, BrokerError):
        return producer
    if isinstance(request, m.Append):
        if producer == (None, None):
            return plain_append(request, config.max_data_bytes, appended_ms)
        try:
            data = client_value(request.data)
        except ProtocolError as exc:
            return exc
        if len(data) > config.max_data_bytes:
            return too_large(len(data), config.max_data_bytes, "data")
        return cmd.AppendMessage(request.queue_name, data, *producer, appended_ms)
    if not 1 <= len(request.values) <= MAX_BATCH_VALUES:
        return _bad(f"values must hold 1 to {MAX_BATCH_VALUES} values, not {len(request.values)}")
    try:
        values = client_values(request.values)
    except ProtocolError as exc:
        return exc
    total = sum(map(len, values))
    if total > config.max_data_bytes:
        return too_large(total, config.max_data_bytes, "the values' data")
    return cmd.AppendBatch(request.queue_name, values, *producer, appended_ms)


def plain_append(
    request: m.Append, max_data_bytes: int, appended_ms: int | None
) -> cmd.AppendMessage | BrokerError:
    """The command of an APPEND without a producer (the original contract's, the most
    frequent of all), or the refusal of its value (its size, its nesting):
    :func:`append_command`'s, with the limit read once by the caller for a whole run of them."""
    try:
        data = client_value(request.data)
    except ProtocolError as exc:  # nested deeper than the broker stores
        return exc
    if len(data) > max_data_bytes:
        return too_large(len(data), max_data_bytes, "data")
    return cmd.AppendMessage(request.queue_name, data, None, None, appended_ms)


def read_command(request: m.Read, config: BrokerConfig) -> _core.Command | BrokerError:
    if not request.client_id:
        return _bad("client_id must not be empty")
    if request.wait_ms is not None and not 0 <= request.wait_ms <= MAX_WAIT_MS:
        return _bad(f"wait_ms must be between 0 and {MAX_WAIT_MS}")
    if request.mode not in (None, "move", "peek"):
        return _bad(f'mode must be "move" or "peek", not {request.mode!r}')
    if request.max_messages is None and request.mode is None:
        return cmd.ReadNext(request.client_id, request.queue_name)
    count = 1 if request.max_messages is None else request.max_messages
    if not 1 <= count <= MAX_READ_MESSAGES:
        return _bad(f"max_messages must be between 1 and {MAX_READ_MESSAGES}")
    return cmd.ReadBatch(
        request.client_id,
        request.queue_name,
        count,
        peek=request.mode == "peek",
        # The answer must fit in one frame, whatever the messages' sizes.
        max_bytes=config.max_data_bytes - count * _PER_MESSAGE_OVERHEAD,
    )


def position_command(request: m.AckRequest | m.SeekRequest) -> _core.Command | BrokerError:
    if not request.client_id:
        return _bad("client_id must not be empty")
    if isinstance(request, m.AckRequest):
        return cmd.Ack(request.client_id, request.queue_name, request.sequence_num)
    if (request.next_sequence_num is None) == (request.to is None):
        return _bad('SEEK takes either next_sequence_num or to ("start" or "end")')
    if request.to is not None and request.to not in ("start", "end"):
        return _bad(f'to must be "start" or "end", not {request.to!r}')
    target = {None: request.next_sequence_num, "start": 1, "end": None}[request.to]
    return cmd.Seek(request.client_id, request.queue_name, target)


def retention_policy(retention: m.Retention) -> cmd.RetentionPolicy | BrokerError:
    policy = cmd.RetentionPolicy(
        retention.max_messages, retention.max_age_ms, retention.delete_acknowledged
    )
    problem = policy.problem()
    return policy if problem is None else _bad(problem)


def retention_command(request: m.SetRetentionRequest) -> cmd.SetRetention | BrokerError:
    policy = retention_policy(request.retention)
    if isinstance(policy, BrokerError):
        return policy
    return cmd.SetRetention(request.queue_name, policy)


def wrong_cluster(own: str, asked: str | None) -> BrokerError | None:
    """The refusal of a request that names another cluster than ``own``."""
    if asked is not None and asked != own:
        return BrokerError(
            ErrorCode.WRONG_CLUSTER,
            f"this broker belongs to cluster {own}, not {asked}",
            cluster_id=own,
        )
    return None


def is_empty_read(result: Any) -> bool:
    return (isinstance(result, cmd.MessageRead) and result.sequence_num is None) or (
        isinstance(result, cmd.MessagesRead) and not result.messages
    )


def queue_list(rows: list[QueueRow], max_queues: int) -> m.QueueList:
    """LIST_QUEUES' page. A client's lag is what it has still to read: the messages after its
    position, without those retention deleted (its next read skips them)."""
    queues = [
        m.QueueInfo(
            row.queue_id,
            row.length,
            [
                m.ClientLag(
                    client, position + 1, row.length - max(position, row.first_retained - 1)
                )
                for client, position in row.clients
            ],
            first_sequence_num=row.first_retained,
            retained=row.retained,
            retention=None if row.retention.keeps_everything else retention_wire(row.retention),
        )
        for row in rows
    ]
    return m.QueueList(queues, queues[-1].queue_id if len(queues) == max_queues else None)
