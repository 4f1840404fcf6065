"""Error codes of the wire contract and the exceptions that carry them.

Every failure on the wire is ``{"status": "error", "message": ..., "code": ...}``. The codes are
stable and machine-readable; the messages are for people and may change.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(enum.StrEnum):
    """The stable, machine-readable ``code`` of an error envelope (docs/protocol.md)."""

    BAD_REQUEST = "BAD_REQUEST"
    """The request is malformed: not JSON, not an object, missing or mistyped fields."""
    UNKNOWN_OPERATION = "UNKNOWN_OPERATION"
    """The ``operation`` field names no operation this broker serves."""
    TOO_LARGE = "TOO_LARGE"
    """The frame or the value is larger than this broker accepts."""
    NOT_LEADER = "NOT_LEADER"
    """Writes and reads go to the leader; the error carries where the leader is, when known."""
    QUEUE_NOT_FOUND = "QUEUE_NOT_FOUND"
    """No queue with that id exists in this cluster."""
    WRONG_CLUSTER = "WRONG_CLUSTER"
    """The request names a cluster (or a queue of a cluster) this broker does not belong to."""
    UNAVAILABLE = "UNAVAILABLE"
    """The broker cannot serve this now (shutting down, overloaded, no quorum); retry later."""
    UNAUTHORIZED = "UNAUTHORIZED"
    """Addition: this connection may not send this request: no (or a wrong) client token or
    cluster secret proof, or a broker-to-broker request on the plaintext listener."""
    INTERNAL = "INTERNAL"
    """A bug or an unexpected storage failure; the request may not have been applied."""
    OUT_OF_ORDER_SEQUENCE = "OUT_OF_ORDER_SEQUENCE"
    """Addition: an idempotent producer skipped a ``producer_seq``; nothing was applied."""
    SEQUENCE_TOO_OLD = "SEQUENCE_TOO_OLD"
    """Addition: an idempotent producer's ``producer_seq`` was applied long ago (its result
    is no longer kept); nothing was applied."""
    PRODUCER_FENCED = "PRODUCER_FENCED"
    """Addition (work queues): a fenced producer's ``producer_epoch`` is lower than one that
    has started since; nothing was applied."""
    QUEUE_IN_USE = "QUEUE_IN_USE"
    """Addition: DELETE_QUEUE of a dead-letter queue in use, or (without ``force``) of a queue
    whose group holds unexpired leases; nothing was applied."""
    GROUP_IN_USE = "GROUP_IN_USE"
    """Addition: GROUP_DELETE (without ``force``) of a group holding unexpired leases."""
    GROUP_NOT_FOUND = "GROUP_NOT_FOUND"
    """Addition: the queue has no consumer group of that name."""
    LIMIT_REACHED = "LIMIT_REACHED"
    """Addition: a bound of the replicated state would be exceeded (64 groups per queue)."""


class BrokerError(Exception):
    """A failure reported by a broker, or refused by the client library before sending.

    ``code`` is an :class:`ErrorCode` value (a plain string for codes this library does not
    know); ``details`` holds the error envelope's extra fields (for ``NOT_LEADER``, the
    leader's ``leader_id``, ``leader_host`` and ``leader_port`` when known).
    """

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details

    CODE: ErrorCode | None = None
    """The code a subclass stands for (None here: any code)."""

    def to_wire(self) -> dict[str, Any]:
        """The error envelope for this error."""
        return {"status": "error", "message": self.message, "code": str(self.code), **self.details}


class ProtocolError(BrokerError):
    """A request or response that could not be understood (bad frame, bad JSON, bad fields).

    Raised where bytes are decoded; an error envelope received from a broker becomes the class
    of its code instead (:class:`BadRequestError`, :class:`TooLargeError`, ...).
    """

    def __init__(self, message: str, code: str = ErrorCode.BAD_REQUEST) -> None:
        super().__init__(code, message)


class BadRequestError(BrokerError):
    """``BAD_REQUEST``: the broker could not use the request (malformed, or a field's value
    is out of range); nothing was applied."""

    CODE = ErrorCode.BAD_REQUEST


class UnknownOperationError(BrokerError):
    """``UNKNOWN_OPERATION``: the broker serves no operation of that name (an older broker)."""

    CODE = ErrorCode.UNKNOWN_OPERATION


class TooLargeError(BrokerError):
    """``TOO_LARGE``: the request or the value is larger than the broker (or this client's
    ``max_frame``) accepts; nothing was applied."""

    CODE = ErrorCode.TOO_LARGE


class RemoteProtocolError(ProtocolError):
    """Another broker sent what the protocol does not allow: a consensus message, a log entry
    or an answer that could not be understood. The peer's fault, never ours (h11's split)."""


class LocalProtocolError(Exception):
    """We were about to send or store something the protocol cannot carry: a bug of ours.

    Not a :class:`BrokerError`, so that no handler of a peer's bad input swallows it."""


class NotLeaderError(BrokerError):
    """``NOT_LEADER``: the broker asked is not the leader of its cluster (the client library
    follows the hint in ``details`` and retries; you meet this only on raw connections)."""

    CODE = ErrorCode.NOT_LEADER


class QueueNotFoundError(BrokerError):
    """``QUEUE_NOT_FOUND``: the queue does not exist."""

    CODE = ErrorCode.QUEUE_NOT_FOUND


class WrongClusterError(BrokerError):
    """``WRONG_CLUSTER``: the request names a cluster that the broker (or, in the client
    library, every seed broker) does not belong to."""

    CODE = ErrorCode.WRONG_CLUSTER


class UnavailableError(BrokerError):
    """``UNAVAILABLE``: the broker cannot serve this now (shutting down, no quorum). The
    client library retries these itself when the request was not applied; what reaches you is
    one of the subclasses, or a refusal of an operator command."""

    CODE = ErrorCode.UNAVAILABLE


class OutcomeUnknownError(UnavailableError):
    """``UNAVAILABLE`` with ``"outcome": "unknown"``: the connection was lost after a write was
    sent (or the broker lost its leadership while applying it): it may or may not have been
    applied. An idempotent producer (:meth:`Client.producer`) retries these safely."""


class UnauthorizedError(BrokerError):
    """``UNAUTHORIZED``: no token, a wrong token, or a missing cluster-secret proof."""

    CODE = ErrorCode.UNAUTHORIZED


class InternalError(BrokerError):
    """``INTERNAL``: a bug or an unexpected storage failure in the broker; the request may or
    may not have been applied."""

    CODE = ErrorCode.INTERNAL


class OutOfOrderSequenceError(BrokerError):
    """``OUT_OF_ORDER_SEQUENCE``: an idempotent producer skipped a ``producer_seq``; nothing was
    applied."""

    CODE = ErrorCode.OUT_OF_ORDER_SEQUENCE


class SequenceTooOldError(BrokerError):
    """``SEQUENCE_TOO_OLD``: an idempotent producer's ``producer_seq`` was applied long ago
    (its result is no longer kept); nothing was applied."""

    CODE = ErrorCode.SEQUENCE_TOO_OLD


class ProducerFencedError(BrokerError):
    """``PRODUCER_FENCED``: a newer instance of this fenced producer (a higher
    ``producer_epoch``) has started; this one is superseded and nothing was applied."""

    CODE = ErrorCode.PRODUCER_FENCED


class QueueInUseError(BrokerError):
    """``QUEUE_IN_USE``: the queue is another group's dead-letter queue, or (without
    ``force``) one of its groups holds unexpired leases; nothing was deleted."""

    CODE = ErrorCode.QUEUE_IN_USE


class GroupInUseError(BrokerError):
    """``GROUP_IN_USE``: the group holds unexpired leases (delete it with ``force``, or after
    they end); nothing was deleted."""

    CODE = ErrorCode.GROUP_IN_USE


class GroupNotFoundError(BrokerError):
    """``GROUP_NOT_FOUND``: the queue has no consumer group of that name (joining creates
    one)."""

    CODE = ErrorCode.GROUP_NOT_FOUND


class LimitReachedError(BrokerError):
    """``LIMIT_REACHED``: a bound of the broker's replicated state would be exceeded (such as
    64 groups per queue); nothing was applied."""

    CODE = ErrorCode.LIMIT_REACHED


class RequestTimeoutError(TimeoutError):
    """A call of the synchronous client (:mod:`trio_broker.sync`) did not finish within its
    ``timeout``. The call was cancelled and the client stays usable; a write that had been
    sent may or may not have been applied (as with :class:`OutcomeUnknownError`)."""


ERROR_CLASSES: dict[str, type[BrokerError]] = {
    cls.CODE: cls
    for cls in (
        BadRequestError,
        UnknownOperationError,
        TooLargeError,
        NotLeaderError,
        QueueNotFoundError,
        WrongClusterError,
        UnavailableError,
        UnauthorizedError,
        InternalError,
        OutOfOrderSequenceError,
        SequenceTooOldError,
        ProducerFencedError,
        QueueInUseError,
        GroupInUseError,
        GroupNotFoundError,
        LimitReachedError,
    )
}
"""The exception class of each wire error code."""


def error_from_wire(response: dict[str, Any]) -> BrokerError:
    """Build the exception for an error envelope received from a broker: the class of its code
    (:data:`ERROR_CLASSES`), :class:`OutcomeUnknownError` when it says the outcome is unknown,
    and plain :class:`BrokerError` for a code this library does not know."""
    details = {k: v for k, v in response.items() if k not in ("status", "message", "code")}
    code = str(response.get("code") or ErrorCode.INTERNAL)
    message = str(response.get("message", "unspecified error"))
    cls = ERROR_CLASSES.get(code, BrokerError)
    if details.get("outcome") == "unknown":
        cls = OutcomeUnknownError
    return cls(code, message, **details)
