"""Who leads, as this broker sees it: the driver's room for roles and leadership transfers.

Each change of role, term or leader is logged once and wakes the driver's waiters; elections
won and leadership transfers (started, completed, aborted, received) are counted for
statistics; a transfer asked for by the operator is started and waited for here; and the
NOT_LEADER answers name the broker to retry on.

This room reads the driver through :class:`LeadershipHost`, so nothing here imports it back.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from .._core import _raft as raft
from .._core._raft_messages import TimeoutNow
from .._errors import BrokerError, ErrorCode
from ._log import log_event
from ._peer_mux import PeerFleetStatistics


class PeerLinks(Protocol):
    def statistics(self) -> PeerFleetStatistics: ...


class LeadershipHost(Protocol):
    """What the leadership room reads of the driver that owns it."""

    broker_id: str
    node: raft.RaftNode

    @property
    def peers(self) -> PeerLinks | None: ...

    def address_of(self, broker_id: str) -> tuple[str, int] | None: ...

    def wake(self) -> None: ...

    def signal_changed(self) -> None: ...

    async def wait_changed(self) -> None: ...


_NOT_RECOVERING: tuple[int | None, bool] = (None, False)
"""``Leadership._last_recovering`` of a broker that is not recovering (nor stalled)."""


class Leadership:
    """Roles and leadership transfers of one broker, logged and counted."""

    def __init__(self, host: LeadershipHost) -> None:
        self._host = host
        self._last_role: tuple[str, int, str | None] | None = None
        self.elections_won = 0
        self.transfers: dict[str, int] = dict.fromkeys(
            ("started", "completed", "aborted", "received"), 0
        )
        """Leadership transfers this broker started as leader, how they ended, and the elections
        it won because a leader handed over to it (``received``)."""
        self._transfer_seen: tuple[int, str] | None = None
        self._transfer_ending: tuple[int, str] | None = None
        self._timeout_now_term: int | None = None
        self._last_recovering: tuple[int | None, bool] = _NOT_RECOVERING
        self._unverified: tuple[bool, int | None, bool] = (False, None, False)
        """(unverified, the tick since which it has been so without a leader, stalled)."""
        self._losses_logged: list[int] = []
        self.shutting_down = False
        """Set by the step-down on shutdown (``membership.step_down``): a transfer that fails
        then because the peers it needed are gone is expected, logged at INFO."""

    def note_timeout_now(self, message: TimeoutNow) -> None:
        """A TIMEOUT_NOW was stepped: if it made this broker campaign, an election it wins in
        this term was handed over (counted as ``received``)."""
        node = self._host.node
        if node.role is raft.Role.CANDIDATE:
            self._timeout_now_term = node.term
            log_event(
                logging.INFO,
                "leadership.timeout_now",
                broker_id=self._host.broker_id,
                leader=message.src,
                term=node.term,
            )

    def _note_transfer(self) -> None:
        """Log and count the start and the outcome of a leadership transfer from this broker.

        The core clears its transfer target when it stops leading; whether the transfer then
        completed is known once this broker learns who leads the next term.
        """
        node = self._host.node
        active = None if node.transfer_target is None else (node.term, node.transfer_target)
        if active == self._transfer_seen and self._transfer_ending is None:
            return
        changed = active != self._transfer_seen
        if self._transfer_seen is not None and changed:
            self._transfer_ending = self._transfer_seen
        self._transfer_seen = active
        if changed and active is not None:
            self.transfers["started"] += 1
            log_event(
                logging.INFO,
                "leadership.transfer_started",
                broker_id=self._host.broker_id,
                to=active[1],
                term=active[0],
            )
        ending = self._transfer_ending
        if ending is not None:
            term, target = ending
            if node.term > term and node.leader_id == target:
                outcome = "completed"
            elif node.is_leader or node.leader_id is not None or active is not None:
                outcome = "aborted"
            else:
                outcome = None  # between leaders: wait until one is known
            if outcome is not None:
                changed = True
                self._transfer_ending = None
                self.transfers[outcome] += 1
                gone = self.gone_at_shutdown(target) if outcome == "aborted" else []
                log_event(
                    logging.WARNING if outcome == "aborted" and not gone else logging.INFO,
                    f"leadership.transfer_{outcome}",
                    broker_id=self._host.broker_id,
                    to=target,
                    term=node.term,
                    leader=node.leader_id,
                    **({"peers_gone": gone, "expected": SHUTDOWN_WITHOUT_PEERS} if gone else {}),
                )
        if changed:
            self._host.signal_changed()

    def gone_at_shutdown(self, target: str | None) -> list[str]:
        """Why a hand-off that failed was expected: while this broker shuts down, the voters
        its links no longer reach (``peer.lost``: stopped too, or down) when they include the
        target or leave fewer than a majority of the voters reachable, so no one could take
        over. Empty otherwise, when the failure deserves a WARNING: not shutting down, or the
        peers it needed are up (docs/operations.md, "Logs")."""
        if not self.shutting_down:
            return []
        return peers_gone(self._host, target)

    def _note_recovering(self) -> None:
        """Say when this broker starts and stops recovering (its log lost entries it had
        acknowledged: it neither votes nor leads meanwhile), and when no leader has come to
        repair it for ten election timeouts: then the cluster may lack a majority of intact
        copies, and refuses to guess which copy is right; an operator must act."""
        node = self._host.node
        stalled = node.recovering and node.election_elapsed >= 10 * node.election_ticks
        state = (node.recovering_until, stalled)
        if state == self._last_recovering and node.losses == self._losses_logged:
            return
        was_until, was_stalled = self._last_recovering
        self._last_recovering = state
        if node.losses != self._losses_logged:
            # Each loss once, even one a leader repaired within the message that showed it.
            self._losses_logged = list(node.losses)
            log_event(
                logging.WARNING,
                "raft.recovering",
                broker_id=self._host.broker_id,
                until=node.losses[-1],
                log_end=node.log.last_index,
                detail="this broker lost log entries it had acknowledged; it neither votes "
                "nor leads until a leader has given them back",
            )
            was_until = was_until or node.losses[-1]
        if node.recovering_until is None and was_until is not None:
            log_event(
                logging.INFO, "raft.recovered", broker_id=self._host.broker_id, index=was_until
            )
        if stalled and not was_stalled:
            log_event(
                logging.WARNING,
                "raft.recovery_stalled",
                broker_id=self._host.broker_id,
                until=node.recovering_until,
                log_end=node.log.last_index,
                detail="no leader has repaired this broker: if a majority of the voters cannot "
                "elect one, too few intact copies of the log remain and the group stays "
                "unavailable for writes rather than guess; bring back the brokers that hold "
                "the lost entries, or restore the damaged brokers' data from a backup "
                "(docs/reliability.md, 'Damaged and shortened logs')",
            )

    def _note_unverified(self) -> None:
        """Say when a broker whose machine rebooted has waited ten election timeouts, with no
        leader, to learn what it may have acknowledged before (it grants no vote meanwhile),
        and what an operator can do; then when it knows (docs/reliability.md, "A reboot votes
        only once it knows")."""
        node = self._host.node
        was, since, stalled = self._unverified
        if not node.unverified:
            if was:
                self._unverified = (False, None, False)
                log_event(
                    logging.INFO, "raft.verified", broker_id=self._host.broker_id, term=node.term
                )
            return
        if node.leader_id is not None:
            self._unverified = (True, None, stalled)
            return
        if since is None:
            self._unverified = (True, node.now, stalled)
            return
        if stalled or node.now - since < 10 * node.election_ticks:
            self._unverified = (True, since, stalled)
            return
        self._unverified = (True, since, True)
        log_event(
            logging.WARNING,
            "raft.unverified",
            broker_id=self._host.broker_id,
            term=node.term,
            log_end=node.log.last_index,
            detail="the machine rebooted, so a disk that lied about syncing may have lost "
            "entries this broker acknowledged: it votes only once it has heard a leader or "
            "the log ends of enough other voters, and no majority can tell it yet; bring "
            "back the other voters, or (with a majority of machines lost for good) accept "
            "the logs as they are on each surviving broker, stopped, with 'python -m "
            "trio_broker data trust-log --data-dir DIR', which may lose acknowledged writes "
            "(docs/reliability.md, 'A reboot votes only once it knows')",
        )

    def note_role(self) -> None:
        """Log a change of role, term or leader (and wake waiters) when it happens: a tick can
        depose a leader (check-quorum) without producing anything to persist.

        Asked after every step and every advance (four to five times per sequential append on
        a leader, two to three per REPLICATE on a replica), nearly always with nothing to
        say: one guard first, read as the three notes below read it (no transfer seen or
        ending, not recovering and no loss unlogged, not unverified, the same role, term and
        leader), so that the common case costs one comparison instead of three calls
        (:meth:`_note_all`, what it stands for)."""
        node = self._host.node
        if (
            node.transfer_target is None
            and self._transfer_seen is None
            and self._transfer_ending is None
            and node.recovering_until is None
            and self._last_recovering == _NOT_RECOVERING
            and node.losses == self._losses_logged
            and not node.unverified
            and not self._unverified[0]
            and self._last_role == (node.role.value, node.term, node.leader_id)
        ):
            return
        self._note_all()

    def _note_all(self) -> None:
        """:meth:`note_role` without its guard: each note asks for itself."""
        self._note_transfer()
        self._note_recovering()
        self._note_unverified()
        node = self._host.node
        state = (node.role.value, node.term, node.leader_id)
        if state == self._last_role:
            return
        log_event(
            logging.INFO,
            "role.changed",
            broker_id=self._host.broker_id,
            role=state[0],
            term=state[1],
            leader=state[2],
        )
        if node.is_leader and (self._last_role is None or self._last_role[0] != "leader"):
            self.elections_won += 1
            if self._timeout_now_term == node.term:
                self.transfers["received"] += 1
                log_event(
                    logging.INFO,
                    "leadership.taken_over",
                    broker_id=self._host.broker_id,
                    term=node.term,
                )
        self._last_role = state
        self._host.signal_changed()

    def transferring_error(self, target: str) -> BrokerError:
        """NOT_LEADER naming the broker leadership is being handed to: nothing was applied,
        and that broker leads within a round trip or two (or this one resumes)."""
        details: dict[str, Any] = {"leader_id": target}
        address = self._host.address_of(target)
        if address is not None:
            details["leader_host"], details["leader_port"] = address
        return BrokerError(
            ErrorCode.NOT_LEADER,
            f"broker {self._host.broker_id} is handing its leadership to {target}; retry there",
            **details,
        )

    async def transfer(self, target: str | None) -> str | BrokerError:
        """Hand this leader's leadership to the voter ``target`` (None: the most caught-up
        voter) and wait until it leads; returns its id. The caller bounds the wait.

        Errors: NOT_LEADER here, BAD_REQUEST for a target that cannot lead (this broker, a
        learner, a stranger) or no other voter, UNAVAILABLE if the transfer was abandoned (the
        target did not take over within an election timeout) or another broker took over.
        """
        node = self._host.node
        if not node.is_leader:
            return self.not_leader_error()
        if target is None:
            target = node.best_transfer_target()
            if target is None:
                return BrokerError(
                    ErrorCode.BAD_REQUEST, "no other voter to hand the leadership to"
                )
        try:
            node.transfer_leadership(target)
        except raft.TransferRefused as exc:
            return BrokerError(ErrorCode.BAD_REQUEST, f"cannot transfer leadership: {exc}")
        term = node.term
        self.note_role()
        self._host.wake()
        while True:
            node = self._host.node
            if node.leader_id == target and node.term > term:
                return target
            if node.is_leader and node.term == term and node.transfer_target != target:
                return BrokerError(
                    ErrorCode.UNAVAILABLE,
                    f"leadership transfer to {target} abandoned: it did not take over within "
                    "an election timeout; this broker still leads",
                )
            if node.term > term and node.leader_id is not None:
                return BrokerError(
                    ErrorCode.UNAVAILABLE,
                    f"leadership transfer to {target} failed: {node.leader_id} leads instead",
                    leader_id=node.leader_id,
                )
            await self._host.wait_changed()

    def not_leader_error(self) -> BrokerError:
        """NOT_LEADER naming the leader this broker knows of, and where it listens."""
        leader = self._host.node.leader_id
        details: dict[str, Any] = {}
        if leader is not None:
            details["leader_id"] = leader
            address = self._host.address_of(leader)
            if address is not None:
                details["leader_host"], details["leader_port"] = address
        where = f"the leader is {leader}" if leader else "no leader is known yet"
        return BrokerError(
            ErrorCode.NOT_LEADER,
            f"broker {self._host.broker_id} is not the leader; {where}",
            **details,
        )


SHUTDOWN_WITHOUT_PEERS = "shutting down while the peers it needed are gone"
"""The ``expected`` field of a hand-off that failed at shutdown, logged at INFO."""


def peers_gone(host: LeadershipHost, target: str | None) -> list[str]:
    """The other voters ``host``'s peer links do not reach, when that leaves ``target`` (if
    any) out of reach or fewer than a majority of the voters reachable, this broker counted;
    else (or without links to look at) empty."""
    if host.peers is None:
        return []
    voters = host.node.config.voters
    connected = {link.peer for link in host.peers.statistics().links if link.connected}
    gone = sorted(voters - connected - {host.broker_id})
    reachable = len(voters) - len(gone)
    if (target is not None and target in gone) or reachable <= len(voters) // 2:
        return gone
    return []


__all__ = ["SHUTDOWN_WITHOUT_PEERS", "Leadership", "LeadershipHost", "peers_gone"]
