"""Snapshots, a part of :class:`~._raft.RaftNode`: compaction (the state machine stands in
for a prefix of the log), the DATA_SYNC built for a member whose entries are compacted, a
DATA_SYNC installed (applied once the runtime installed it, in ``advance``), and a snapshot
asked for (``want_snapshot``) when a committed entry cannot be applied here.

Typed against ``_raft_state.RaftState`` for the type checker only (see ``_raft_elections``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._raft_messages import DataSync, SnapshotMeta
from ._raft_types import UsageError

if TYPE_CHECKING:
    from ._raft_state import RaftState as _Node
else:
    _Node = object


class Snapshots(_Node):
    """Mixed into :class:`~._raft.RaftNode`: snapshots (fields: ``_snapshot_config``,
    ``_snapshot_to_install``, ``_snapshot_wanted``, ``_snapshots_to_send``)."""

    def compact(self, index: int) -> SnapshotMeta:
        """Drop log entries up to ``index``: the runtime's state machine now stands in for them.

        ``index`` must be applied and durable. Returns the snapshot metadata to store with the
        state machine (and to delete the log up to). Replicas that need older entries get
        DATA_SYNC.
        """
        if index > self.applied:
            raise UsageError(f"compact({index}) beyond applied index {self.applied}")
        config = self._config_at(index)
        self.log.compact(index)
        self._snapshot_config = config
        return SnapshotMeta(self.log.snapshot_index, self.log.snapshot_term, config)

    def make_data_sync(self, peer: Any, index: int, data: Any) -> DataSync:
        """Build the DATA_SYNC for ``peer`` from the state machine ``data`` at applied ``index``."""
        term = self.log.term(index)
        if term is None or index > self.applied:
            raise UsageError(f"no snapshot possible at {index}")
        meta = SnapshotMeta(index, term, self._config_at(index))
        return DataSync(
            src=self.id,
            dst=peer,
            term=self.term,
            cluster_version=self.cluster_version,
            snapshot=meta,
            data=data,
        )

    def want_snapshot(self) -> None:
        """The runtime cannot apply the next committed entries: one reads a stored value that
        is damaged here and that no other member holds any more (deleted by retention since;
        docs/reliability.md, "A value nobody holds any more"). The next snapshot from the
        leader (DATA_SYNC) is then installed even where this broker's commit index is already
        past its index, or its log already holds that prefix, as long as the snapshot is past
        what is applied or being applied (:meth:`_wanted_fits`): its state holds the effect
        of those entries, so the value is no longer needed. The log after the snapshot's
        index is kept (written again with the install), and the commit index never moves
        back."""
        if self._snapshot_to_install is None:  # (one waiting already stands in)
            self._snapshot_wanted = True

    def drop_snapshot_wish(self) -> None:
        """The held transaction completed (its value was repaired, or a snapshot stands in
        for it): no snapshot inside the committed log is installed any more. A wish left set
        would install a later one over entries applied since."""
        self._snapshot_wanted = False

    def _wanted_fits(self, index: int) -> bool:
        """Whether a wanted snapshot at ``index`` is past everything applied, counting the
        outstanding Ready's committed entries (the runtime is applying them now; ``applied``
        moves to them in advance()): installed behind them, the state would go back to
        ``index`` while the core believes them applied, and they would never be applied
        again on this broker."""
        if index <= self.applied:
            return False
        rd = self._inflight
        if rd is None:
            return True
        if rd.committed_entries and index < rd.committed_entries[-1].index:
            return False
        return rd.snapshot is None or index >= rd.snapshot.snapshot.index

    def snapshot_stands_in(self, index: int) -> bool:
        """Whether a snapshot waiting to be installed (by the next Ready) covers ``index``:
        the runtime may then complete the outstanding Ready without applying its committed
        entries up to there (their effect is in the snapshot's state, which replaces the
        state they would have changed)."""
        pending = self._snapshot_to_install
        return pending is not None and pending.snapshot.index >= index

    def _handle_data_sync(self, m: DataSync) -> None:
        meta = m.snapshot
        wanted = self._snapshot_wanted and self._wanted_fits(meta.index)
        if meta.index <= self.commit and not wanted:
            self._ack(m, self.commit)
            return
        self._snapshot_wanted = False
        if self.log.match_term(meta.index, meta.term):
            self.commit = max(self.commit, meta.index)
            if wanted:
                # Asked for (``want_snapshot``): its state stands in for the entries up to
                # its index, which this log already holds; the entries after it are kept
                # (the install replaces the whole stored log: the same Ready writes them
                # again, so nothing this broker acknowledged is ever missing from its disk).
                kept = self.log.slice(meta.index + 1, self.log.last_index + 1)
                self.log.restore(meta.index, meta.term)
                self.log.append(kept)
                self._snapshot_config = meta.config
                self._snapshot_to_install = m
            # (Else we already hold that prefix: we just learn it is committed.)
            self._ack(m, meta.index)
            return
        self.log.restore(meta.index, meta.term)
        self._snapshot_config = meta.config
        self._set_config(meta.config)
        self.commit = meta.index
        self._snapshot_to_install = m  # applied once the runtime installed it (advance())
        self._check_recovered()
        self._ack(m, meta.index)
