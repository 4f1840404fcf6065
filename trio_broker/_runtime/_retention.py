"""Retention: which queues have a policy, and the leader's loop that enforces them.

Replicas delete what retention drops when they apply an ``ApplyRetention`` command, which
carries the leader's wall clock, so every replica deletes the same messages
(docs/protocol.md, "Retention"). This room keeps the set of queues with a policy current as
commands are applied, and on the leader proposes an enforcement every ``retention_interval``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._core._commands import ApplyRetention, RetentionPolicy
from .._errors import BrokerError, ErrorCode
from ._config import BrokerConfig
from ._log import log_event, logger


class RetentionEnforcer:
    """The queues with a retention policy (as applied here), and their enforcement."""

    def __init__(
        self,
        broker_id: str,
        config: BrokerConfig,
        submit: Callable[[Any], Awaitable[Any]],
        may_enforce: Callable[[], bool],
    ) -> None:
        self.broker_id = broker_id
        self.config = config
        self._submit = submit
        self._may_enforce = may_enforce
        """True on the leader, while it is not shutting down."""
        self.retained: set[str] = set()
        """Queues with a retention policy: while there is one, the leader proposes an
        enforcement every ``retention_interval``."""
        self._policy_added = trio.Event()

    def note_policy(self, queue_id: str, policy: RetentionPolicy) -> None:
        if policy.keeps_everything:
            self.retained.discard(queue_id)
        else:
            self.retained.add(queue_id)
            self._policy_added.set()

    def replace(self, retained: set[str]) -> None:
        """An installed snapshot replaced the state the set was built from."""
        self.retained = set(retained)
        if retained:
            self._policy_added.set()

    def wall_clock_ms(self) -> int:
        return int(self.config.wall_clock() * 1000)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """On the leader, while some queue has a retention policy: propose an enforcement
        (``ApplyRetention`` with this broker's wall clock) every ``retention_interval``, one
        at a time. Failures (no quorum, a lost leadership) are only logged: the next round
        retries."""
        task_status.started()
        while True:
            if not self.retained:
                # Nothing to enforce: sleep until a policy appears (no idle wake-ups).
                self._policy_added = trio.Event()
                await self._policy_added.wait()
            await trio.sleep(self.config.retention_interval)
            if not self.retained or not self._may_enforce():
                continue
            try:
                result: Any = BrokerError(ErrorCode.UNAVAILABLE, "no answer in time")
                # Bounded: a lost leadership resolves the proposal, but never wait for ever.
                with trio.move_on_after(self.config.failure_timeout * 10):
                    result = await self._submit(ApplyRetention(self.wall_clock_ms()))
            except Exception:
                logger.exception("retention.crashed broker_id=%s", self.broker_id)
                continue
            if isinstance(result, BrokerError):
                log_event(logging.DEBUG, "retention.not_applied", reason=result.message)
            elif result.trimmed:
                log_event(
                    logging.DEBUG,
                    "retention.applied",
                    queues=len(result.trimmed),
                    first_retained=",".join(f"{q}:{n}" for q, n in result.trimmed),
                )
