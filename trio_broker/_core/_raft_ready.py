"""The hand-off of the core's effects to the runtime (etcd raft's ``Ready``/``Advance``):
:class:`Ready`, what to send, persist and apply, in that order ("persist before you send" is
written where it is declared), and the part of :class:`~._raft.RaftNode` that gathers the
pending effects into one (``has_ready``, ``take_messages``, ``ready``) and moves the core
on once the runtime did them (``advance``). One Ready is outstanding at a time.

Typed against ``_raft_state.RaftState`` for the type checker only (see ``_raft_elections``)."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import attrs

from ._raft_messages import DataSync, Entry, HardState, Message
from ._raft_types import Role, UsageError

if TYPE_CHECKING:
    from ._raft_state import RaftState as _Node
else:
    _Node = object

__all__ = ["Ready", "ReadyHandOff", "hard_state_fields"]

_FIELDS = tuple(f.name for f in attrs.fields(HardState))
_HARD_STATE = operator.attrgetter(*_FIELDS)
"""A hard state's fields, as one tuple in their order: compared with the core's own
(:func:`hard_state_fields`) by ``has_ready`` and ``ready`` without a ``HardState`` made for it."""
_COMMIT = _FIELDS.index("commit")


def hard_state_fields(node: Any) -> tuple[Any, ...]:
    """The core's current (possibly not yet durable) hard state as the tuple of
    ``HardState``'s fields (``RaftNode.hard_state`` makes the object of it): ``ready`` and
    ``has_ready`` compare it with the persisted one's, and a Ready makes a ``HardState`` only
    when one differs (a replica's REPLICATEs change nothing in it while their apply waits:
    about 2 µs of each Ready's 10 to make and compare one)."""
    until = node.recovering_until
    return (
        node.term,
        node.voted_for,
        node.commit,
        until or 0,
        node.recovering_term if until else 0,
        node.unverified or node.vote_floor is not None,
        node.vote_lost and node._vote_lost_stored,
    )


@attrs.frozen
class Ready:
    """Everything the runtime must do for the core, in this order.

    1. Send ``messages`` whenever convenient, even before step 2 completes. These are the
       leader's appends, heartbeats and announcements, and replies that promise nothing
       durable (heartbeat acks): a leader may overlap its fsync with replication because it
       counts itself towards a quorum only after ``advance()``.
    2. Persist, in ONE atomic transaction: ``snapshot`` (replace the state machine and the whole
       log), then delete log entries with index >= ``truncate_from``, append ``entries``, store
       ``hard_state``.
    3. **Persist before you send**: only once step 2 is durable, send ``persisted_messages``
       (votes, vote requests, vote replies, replica acknowledgements). They promise what step 2
       wrote; sending them earlier lets a crash turn a promise into a lie (a second vote in a
       term, an acknowledged entry that vanished).
    4. Apply ``committed_entries`` to the state machine in order (after step 2).
    5. For each peer in ``snapshots_to_send``, call :meth:`RaftNode.make_data_sync` with the
       state machine at some applied index and send the result.
    6. Call :meth:`RaftNode.advance`.
    """

    hard_state: HardState | None
    truncate_from: int | None
    entries: tuple[Entry, ...]
    snapshot: DataSync | None
    messages: tuple[Message, ...]
    persisted_messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    snapshots_to_send: tuple[Any, ...]

    @property
    def must_sync(self) -> bool:
        """Whether step 2 has anything to write."""
        return bool(
            self.hard_state is not None
            or self.entries
            or self.truncate_from is not None
            or self.snapshot is not None
        )


class ReadyHandOff(_Node):
    """Mixed into :class:`~._raft.RaftNode`: the Ready taken and advanced (its state:
    ``_inflight``, ``_msgs``, ``_persisted_msgs``, ``_snapshots_to_send``,
    ``_snapshot_to_install``, ``_append_pending``, ``_persisted_hs``)."""

    def has_ready(self) -> bool:
        """Whether :meth:`ready` has work (always False while a Ready is outstanding). The
        cheap questions first; whether the committed entries' apply waits
        (:meth:`_apply_waits`) only when the answer hangs on it."""
        if self._inflight is not None:
            return False
        if (
            self._append_pending
            or self._msgs
            or self._persisted_msgs
            or self._snapshots_to_send
            or self._snapshot_to_install is not None
            or self.log.has_unstable()
        ):
            return True
        fields = hard_state_fields(self)
        kept = _HARD_STATE(self._persisted_hs)
        commit = _COMMIT
        if fields[:commit] != kept[:commit] or fields[commit + 1 :] != kept[commit + 1 :]:
            return True
        if (fields[commit] != kept[commit] or self.applied < self.commit) and (
            not self._apply_waits()
        ):
            return True
        return self.role is Role.LEADER and self.reads.wants_round()

    def _apply_waits(self) -> bool:
        """Whether the committed entries not yet applied wait (``RaftNode.apply_lag``): on a
        broker that does not lead, fewer than ``apply_lag`` of them, the leader not gone idle
        since (``_apply_due``), no snapshot to install, and every one's payload accepted by
        ``apply_later``. Their commit index is then not written either: a restart relearns
        it from the leader (nothing it guards depends on it: the applied index, written with
        each apply, says what was applied; the entries are durable in the log)."""
        lag = self.commit - self.applied
        if (
            lag <= 0
            or lag >= self.apply_lag
            or self._apply_due
            or self.role is Role.LEADER
            or self._snapshot_to_install is not None
            or self.apply_later is None
        ):
            return False
        # Each committed entry is judged once (``_later_judged``): a replica asks this two or
        # three times a Ready of the same waiting entries, one more each time. A committed
        # entry never changes at its index, and the judgement is its payload's alone.
        first, last = self.applied + 1, self.commit
        known_first, known_last = self._later_judged
        if first < known_first or first > known_last + 1:
            known_first, known_last = first, first - 1  # (none of these judged yet)
        later = self.apply_later
        log = self.log
        for index in range(known_last + 1, last + 1):
            if not later(log.entry(index).payload):
                self._later_judged = (known_first, index - 1)
                return False
        if last > known_last:
            self._later_judged = (known_first, last)
        return True

    def take_messages(self) -> list[Message]:
        """Take now the messages a Ready would carry in ``messages`` (step 1: heartbeats,
        their answers, the leader's appends: nothing that promises what is being persisted),
        so that a runtime busy persisting the outstanding Ready can still send them on time.
        ``persisted_messages`` stay for the Ready. Allowed while a Ready is outstanding."""
        self._send_read_round()
        msgs, self._msgs = self._msgs, []
        return msgs

    def ready(self) -> Ready:
        """Take the pending effects. Call :meth:`advance` once they are done."""
        if self._inflight is not None:
            raise UsageError("ready() called again before advance()")
        if self._append_pending:
            self._append_pending = False
            if self.role is Role.LEADER:
                self._broadcast_append()
        self._send_read_round()
        waits = self._apply_waits()
        fields = hard_state_fields(self)
        kept = _HARD_STATE(self._persisted_hs)
        commit = _COMMIT
        hs: HardState | None = None
        if fields[:commit] != kept[:commit] or fields[commit + 1 :] != kept[commit + 1 :]:
            hs = HardState(*fields)
        elif fields[commit] != kept[commit] and not waits:
            hs = HardState(*fields)  # (a commit index alone is not written while its apply waits)
        trunc, entries = self.log.take_unstable()
        # ``applied`` moves in advance(), once the runtime applied these (etcd's Advance): a
        # snapshot stepped in since then stands in for everything up to its index.
        applied = self.applied
        if self._snapshot_to_install is not None:
            applied = max(applied, self._snapshot_to_install.snapshot.index)
        committed: list[Entry] = []
        if applied < self.commit and not waits:
            upto = min(self.commit, applied + self.max_apply)
            committed = self.log.slice(applied + 1, upto + 1)
            if upto == self.commit:
                self._apply_due = False
        rd = Ready(
            hard_state=hs,
            truncate_from=trunc,
            entries=tuple(entries),
            snapshot=self._snapshot_to_install,
            messages=tuple(self._msgs),
            persisted_messages=tuple(self._persisted_msgs),
            committed_entries=tuple(committed),
            snapshots_to_send=tuple(self._snapshots_to_send),
        )
        self._msgs, self._persisted_msgs, self._snapshots_to_send = [], [], []
        self._snapshot_to_install = None
        self._inflight = rd
        return rd

    def advance(self) -> None:
        """The outstanding Ready is durable, sent and applied: ``applied`` moves to its last
        committed entry (or its snapshot's index)."""
        rd = self._inflight
        if rd is None:
            raise UsageError("advance() without an outstanding ready()")
        self._inflight = None
        if rd.snapshot is not None:
            self.applied = max(self.applied, rd.snapshot.snapshot.index)
        if rd.committed_entries:
            self.applied = max(self.applied, rd.committed_entries[-1].index)
        if rd.hard_state is not None:
            self._persisted_hs = rd.hard_state
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if self.role is Role.LEADER and self._maybe_commit():
            # The new commit index rides on the next REPLICATE or heartbeat: no message (and
            # no transaction on every replica) just to spread it.
            self._broadcast_append()
