"""Error codes of the wire contract and the exceptions that carry them.

Every failure on the wire is ``{"status": "error", "message": ..., "code": ...}``. The codes are
stable and machine-readable; the messages are for people and may change.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(enum.StrEnum):
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

    def to_wire(self) -> dict[str, Any]:
        return {"status": "error", "message": self.message, "code": str(self.code), **self.details}


class ProtocolError(BrokerError):
    """A request that could not be understood (bad frame, bad JSON, bad fields)."""

    def __init__(self, message: str, code: str = ErrorCode.BAD_REQUEST) -> None:
        super().__init__(code, message)


class RemoteProtocolError(ProtocolError):
    """Another broker sent what the protocol does not allow: a consensus message, a log entry
    or an answer that could not be understood. The peer's fault, never ours (h11's split)."""


class LocalProtocolError(Exception):
    """We were about to send or store something the protocol cannot carry: a bug of ours.

    Not a :class:`BrokerError`, so that no handler of a peer's bad input swallows it."""


class NotLeaderError(BrokerError):
    """The broker asked is not the leader of its cluster."""


class QueueNotFoundError(BrokerError):
    """The queue does not exist."""


class OutcomeUnknownError(BrokerError):
    """The connection was lost after a write was sent: it may or may not have been applied."""


_BY_CODE: dict[str, type[BrokerError]] = {
    ErrorCode.NOT_LEADER: NotLeaderError,
    ErrorCode.QUEUE_NOT_FOUND: QueueNotFoundError,
}


def error_from_wire(response: dict[str, Any]) -> BrokerError:
    """Build the exception for an error envelope received from a broker."""
    details = {k: v for k, v in response.items() if k not in ("status", "message", "code")}
    code = str(response.get("code") or ErrorCode.INTERNAL)
    message = str(response.get("message", "unspecified error"))
    cls = _BY_CODE.get(code, BrokerError)
    if details.get("outcome") == "unknown":
        cls = OutcomeUnknownError
    return cls(code, message, **details)
