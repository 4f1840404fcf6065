"""Free space on the data directory's filesystem, and the writes a broker refuses without it.

A broker is out of space in one of two ways (docs/reliability.md, "Full disks"):

- **reserve reached** (``low``): the filesystem has less free space than the reserve
  (``min_free_mb``). The leader refuses the writes that add data (APPEND, APPEND_BATCH,
  CREATE_QUEUE and the work queues' publishes and creates), and goes on with everything else:
  READ, ACK and SEEK (a read moves a position, a small replicated write), deletes and retention
  (which free space), votes, terms, membership and the entries a replica receives. The reserve
  exists so that those still find room.
- **a write failed** (``full``): a storage transaction failed for lack of space (SQLite's
  ``SQLITE_FULL``, ``ENOSPC``), so it rolled back. The driver retries that same transaction
  until it succeeds (:meth:`DiskSpace.retrying`: once free space grew, or every
  ``RETRY_ANYWAY_SECONDS``); until then it proposes nothing, refuses every write, a leader
  hands its leadership over, and a replica does not step the REPLICATEs it could not persist.

Free space is measured with ``statvfs`` (the space an unprivileged process may use) once a
poll interval, on the event loop's thread: a few microseconds on a local filesystem. The broker
leaves the state once a write has succeeded and the free space is back above the reserve plus
an eighth of it (so that it does not flap at the edge); it logs one line when it enters and one
when it leaves.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from .._core._commands import AppendBatch, AppendMessage, CreateQueue
from .._core._work_commands import CreateNamedQueue, Publish
from .._errors import BrokerError, ErrorCode
from .._storage._worker import is_disk_full
from ._log import log_event

T = TypeVar("T")

MIB = 1024 * 1024
DEFAULT_RESERVE = 64 * MIB
DEFAULT_RESERVE_FRACTION = 0.05
"""Without ``min_free_mb``: 64 MiB, or this fraction of a smaller filesystem (under 1.25 GiB),
so that a small disk is not refused writes from the start."""
POLL_SECONDS = 1.0
"""How often free space is measured, and a transaction that failed for lack of it retried."""
RETRY_ANYWAY_SECONDS = 10.0
"""A failed transaction is retried when free space grew since it failed, else this often."""
DISK_FULL = "disk_full"
"""The ``reason`` of the UNAVAILABLE refusals of a broker out of space (docs/protocol.md)."""

ADDS_DATA = (AppendMessage, AppendBatch, CreateQueue, CreateNamedQueue, Publish)
"""Commands refused once the reserve is reached: they add messages or queues."""


def free_space(path: Path) -> tuple[int, int]:
    """(free bytes an unprivileged process may use, total bytes) of the filesystem of
    ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def reserve_bytes(min_free_mb: float | None, total: int) -> int:
    if min_free_mb is not None:
        return int(min_free_mb * MIB)
    return min(DEFAULT_RESERVE, int(total * DEFAULT_RESERVE_FRACTION))


class DiskState(enum.Enum):
    OK = "ok"
    LOW = "low"
    """Free space below the reserve: writes that add data are refused."""
    FULL = "full"
    """A write failed for lack of space and has not succeeded since: every write is refused."""


def _mib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / MIB:.1f} MiB"


class DiskSpace:
    """One broker's view of its data directory's free space; see the module docstring."""

    def __init__(
        self,
        broker_id: str,
        data_dir: Path,
        min_free_mb: float | None,
        *,
        measure: Callable[[Path], tuple[int, int]] = free_space,
        interval: float = POLL_SECONDS,
    ) -> None:
        self.broker_id = broker_id
        self.data_dir = Path(data_dir)
        self.min_free_mb = min_free_mb
        self._measure = measure
        self.interval = interval
        self.state = DiskState.OK
        self.free_bytes: int | None = None
        self.total_bytes: int | None = None
        self.reserve_bytes = 0 if min_free_mb is None else int(min_free_mb * MIB)
        self.write_failures = 0
        """Transactions that failed for lack of space (each retry that failed counts)."""
        self._failing: set[object] = set()
        """The jobs whose last attempt failed for lack of space (see :meth:`retrying`)."""
        self._failed_free: int | None = None
        self._failed_at = 0.0
        self._since = 0.0
        self._unmeasurable = False

    # -- what the driver asks --------------------------------------------------------------------

    @property
    def stuck(self) -> bool:
        """A write failed for lack of space and has not succeeded since."""
        return bool(self._failing)

    async def retrying(
        self, job: Callable[[], Awaitable[T]], on_failure: Callable[[], None] | None = None
    ) -> T:
        """``await job()``, again and again while it fails for lack of space (each failure
        must have changed nothing: a transaction that rolled back), calling ``on_failure``
        after each failure; meanwhile the broker is ``full``. Polls as :meth:`wait_retry`;
        cancellable."""
        token = object()
        try:
            while True:
                try:
                    result = await job()
                except Exception as exc:
                    if not is_disk_full(exc):
                        raise
                    self.write_failures += 1
                    self._failing.add(token)
                    self.measure()
                    self._failed_free = self.free_bytes
                    self._failed_at = trio.current_time()
                    self._update()
                    if on_failure is not None:
                        on_failure()
                else:
                    if token in self._failing:
                        self._failing.discard(token)
                        self.measure()
                        self._update()
                    return result
                await self.wait_retry()
        finally:
            self._failing.discard(token)  # (cancelled: the broker is stopping)

    def refusal(self, command: Any) -> BrokerError | None:
        """The answer to a proposal of ``command`` in this state, or None to go ahead."""
        if self.state is DiskState.FULL:
            return self.write_refusal()
        if self.state is DiskState.LOW and isinstance(command, ADDS_DATA):
            return BrokerError(
                ErrorCode.UNAVAILABLE,
                f"broker {self.broker_id} is out of disk space: {_mib(self.free_bytes)} free "
                f"in {self.data_dir}, below its reserve of {_mib(self.reserve_bytes)} "
                "(--min-free-mb); it refuses writes that add data until space is freed "
                "(reads still work); nothing was applied",
                **self._details(),
            )
        return None

    def write_refusal(self) -> BrokerError:
        """The refusal of any write while a write fails for lack of space."""
        return BrokerError(
            ErrorCode.UNAVAILABLE,
            f"broker {self.broker_id} is out of disk space: a write to {self.data_dir} "
            f"failed ({_mib(self.free_bytes)} free); it refuses writes until space is "
            "freed; nothing was applied",
            **self._details(),
        )

    def in_flight_error(self) -> BrokerError:
        """The answer to a proposal already in the log when a write failed: it may yet be
        applied (once space is freed, or by another leader), so its outcome is unknown."""
        return BrokerError(
            ErrorCode.UNAVAILABLE,
            f"outcome unknown: broker {self.broker_id} could not write to its disk (full); "
            "the request may or may not have been applied",
            outcome="unknown",
            **self._details(),
        )

    def _details(self) -> dict[str, Any]:
        return {
            "reason": DISK_FULL,
            "free_bytes": self.free_bytes,
            "min_free_bytes": self.reserve_bytes,
        }

    async def wait_retry(self) -> None:
        """Wait until the failed transaction is worth retrying: polls free space every
        ``interval`` and returns once it grew since the failure, or after
        ``RETRY_ANYWAY_SECONDS`` (space freed inside the database does not show in
        ``statvfs``). Cancellable."""
        while True:
            await trio.sleep(self.interval)
            self.measure()
            self._update()
            grew = (
                self.free_bytes is not None
                and self._failed_free is not None
                and self.free_bytes > self._failed_free
            )
            if grew or trio.current_time() - self._failed_at >= RETRY_ANYWAY_SECONDS:
                return

    # -- polling ---------------------------------------------------------------------------------

    def measure(self) -> None:
        """Read the free space now; an unreadable filesystem keeps the last reading."""
        try:
            free, total = self._measure(self.data_dir)
        except OSError as exc:
            if not self._unmeasurable:
                self._unmeasurable = True
                log_event(
                    logging.WARNING,
                    "disk.unmeasurable",
                    broker_id=self.broker_id,
                    data_dir=str(self.data_dir),
                    error=repr(exc),
                )
            return
        self._unmeasurable = False
        self.free_bytes, self.total_bytes = free, total
        self.reserve_bytes = reserve_bytes(self.min_free_mb, total)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Measure free space every ``interval`` seconds, for as long as the broker runs."""
        self.measure()
        self._update()
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            self.measure()
            self._update()

    def _update(self) -> None:
        free, reserve = self.free_bytes, self.reserve_bytes
        below = free is not None and free < reserve
        if self._failing:
            state = DiskState.FULL
        elif below:
            state = DiskState.LOW
        elif self.state is not DiskState.OK and free is not None and free < reserve + reserve // 8:
            state = DiskState.LOW  # not yet clear of the edge
        else:
            state = DiskState.OK
        if state is self.state:
            return
        was, self.state = self.state, state
        now = trio.current_time()
        if was is DiskState.OK:
            self._since = now
            log_event(
                logging.WARNING,
                "disk.full",
                broker_id=self.broker_id,
                state=state.value,
                cause="a write failed" if state is DiskState.FULL else "reserve reached",
                free_bytes=free,
                reserve_bytes=reserve,
                data_dir=str(self.data_dir),
            )
        elif state is DiskState.OK:
            log_event(
                logging.INFO,
                "disk.space_recovered",
                broker_id=self.broker_id,
                free_bytes=free,
                reserve_bytes=reserve,
                seconds=round(now - self._since, 3),
                write_failures=self.write_failures,
            )


__all__ = ["DISK_FULL", "DiskSpace", "DiskState", "free_space", "is_disk_full"]
