"""The replication group's members as the driver keeps them: membership changes proposed and
waited for, the address book (what each broker last told us, and the replicated one, which the
leader corrects when it is stale), and the leader's housekeeping (its own address kept in the
book, one caught-up learner promoted at a time). A part of :class:`~._driver.RaftDriver`,
kept apart from its loop."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import _core
from .._core import _raft as raft
from .._core._raft_messages import ChangeAction, ConfigChange
from .._errors import BrokerError, ErrorCode
from ._log import log_event
from ._pending import Pending, acquire

if TYPE_CHECKING:
    from ._driver import RaftDriver


class GroupMembers:
    """Mixed into :class:`~._driver.RaftDriver` (its state: ``node``, ``addresses``,
    ``hinted_addresses``, ``_address_updates``, ``_changing_membership``, ``_capacity``,
    ``disk``, ``_nursery``)."""

    async def change_membership(self: RaftDriver, change: ConfigChange) -> Any:
        """Propose one membership change and wait until it is applied."""
        # The unit is taken before proposing: the entry must not be applied before its waiter
        # is registered (waiting for capacity after proposing could let it be).
        await acquire(self._capacity)
        if self.disk.stuck:
            self._capacity.release()
            return self.disk.refusal(change)
        try:
            term, index = self.node.propose_config_change(change)
        except raft.NotLeader:
            self._capacity.release()
            return self.not_leader_error()
        except raft.RaftError as exc:
            self._capacity.release()
            return BrokerError(ErrorCode.UNAVAILABLE, f"membership change refused: {exc}")
        pending = Pending()
        self._wait_for(index, term, [pending])
        self.wake()
        return await pending.wait()

    def address_of(self: RaftDriver, broker_id: str) -> tuple[str, int] | None:
        """Where a broker listens: what it last told us itself, else the address book."""
        return self.hinted_addresses.get(broker_id) or self.addresses.get(broker_id)

    def note_address(self: RaftDriver, broker_id: str, address: tuple[str, int]) -> None:
        """A broker told us where it listens (PEER_HELLO). The leader also corrects the
        replicated address book when it is stale (a broker restarted on another port)."""
        self.hinted_addresses[broker_id] = address
        if (
            self.node.is_leader
            and broker_id in self.node.config.members
            and self.addresses.get(broker_id) != address
            and broker_id not in self._address_updates
            and self._nursery is not None
        ):
            self._address_updates.add(broker_id)
            self._nursery.start_soon(self._update_address, broker_id, address)

    async def _update_address(self: RaftDriver, broker_id: str, address: tuple[str, int]) -> None:
        try:
            pending = await self.propose(_core.SetBrokerAddress(broker_id, *address))
            if isinstance(pending, Pending):
                await pending.wait()
        finally:
            self._address_updates.discard(broker_id)

    def _leader_housekeeping(self: RaftDriver) -> None:
        """Keep our own address in the book; promote one caught-up learner at a time."""
        assert self._nursery is not None
        self.note_address(self.broker_id, self.self_address)
        if self._changing_membership or self.node.transfer_target is not None:
            return  # (no membership change during a leadership transfer)
        if self.disk.stuck:
            return  # (nor while a write fails for lack of space: it would be refused)
        for learner in sorted(self.node.config.learners):
            if self.node.caught_up(learner) and self.may_promote(learner):
                self._changing_membership = True
                self._nursery.start_soon(self._promote, learner)
                return

    async def _promote(self: RaftDriver, learner: str) -> None:
        try:
            result = await self.change_membership(ConfigChange(ChangeAction.PROMOTE, learner))
            if isinstance(result, BrokerError):
                log_event(
                    logging.WARNING,
                    "membership.promote_failed",
                    broker=learner,
                    reason=result.message,
                )
            else:
                log_event(
                    logging.INFO,
                    "membership.promoted",
                    broker=learner,
                    cluster_version=self.node.cluster_version,
                )
        finally:
            self._changing_membership = False
            self.wake()


__all__ = ["GroupMembers"]
