"""Idempotent producers (:class:`Producer`, made by :meth:`Client.producer`): appends that
are sent again with the same (producer, sequence number) when their outcome is unknown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .._errors import OutcomeUnknownError
from .._protocol import Appended
from .._protocol._messages import BatchAppended

if TYPE_CHECKING:
    from ._client import Client

_AppendedT = TypeVar("_AppendedT", Appended, BatchAppended)


class Producer:
    """Idempotent appends (see :meth:`Client.producer`).

    Each append carries this producer's id and its next sequence number for the queue; when
    the outcome of an append is unknown (a lost answer, a failover), it is sent again with the
    same number, and the cluster answers with the first attempt's result instead of storing it
    twice. Appends of one producer to one queue go one at a time, in order.
    """

    def __init__(
        self, client: Client, producer_id: str, next_seq: int, epoch: int | None = None
    ) -> None:
        self.client = client
        """The client this producer sends through."""
        self.producer_id = producer_id
        """The id the cluster recognises this producer's appends by."""
        self.epoch = epoch
        """This instance's epoch (None: an idempotent producer without fencing)."""
        self.last_duplicate = False
        """True when the cluster answered the last append as a retry of one it had applied
        already (its first result is what was returned)."""
        self.duplicates = 0
        """Appends the cluster answered as retries, since this producer was made."""
        self._first_seq = next_seq
        self._next: dict[str, int] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def append(
        self, queue_id: str, data: Any, *, headers: dict[str, str] | None = None
    ) -> int:
        """Append one value, exactly once; returns its sequence number."""
        appended = await self._send(
            queue_id,
            lambda seq: self.client._append_as(
                queue_id, data, self.producer_id, seq, headers=headers, epoch=self.epoch
            ),
        )
        return appended.sequence_num

    async def append_batch(
        self,
        queue_id: str,
        values: Sequence[Any],
        *,
        headers: Sequence[dict[str, str] | None] | None = None,
    ) -> list[int]:
        """Append several values atomically, exactly once; returns their sequence numbers."""
        appended = await self._send(
            queue_id,
            lambda seq: self.client._append_batch(
                queue_id, values, self.producer_id, seq, headers=headers, epoch=self.epoch
            ),
        )
        return appended.sequence_nums

    async def _send(
        self, queue_id: str, attempt: Callable[[int], Awaitable[_AppendedT]]
    ) -> _AppendedT:
        lock = self._locks.setdefault(queue_id, anyio.Lock())
        async with lock:
            seq = self._next.get(queue_id, self._first_seq)
            backoff = 0.02
            while True:
                try:
                    result = await attempt(seq)
                except OutcomeUnknownError:
                    # Safe to send again: the cluster recognises this (producer, seq).
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
                self._next[queue_id] = seq + 1
                self.last_duplicate = result.duplicate
                self.duplicates += result.duplicate
                return result


__all__ = ["Producer"]
