"""The in-memory view of the replicated log, with what is durable and what is not.

Indexes start at 1; index ``snapshot_index`` (0 for an empty log) is the last compacted entry,
whose term is still known so that log matching works right after a compaction.
"""

from __future__ import annotations

from bisect import bisect_right

from ._raft_messages import ConfigEntry, Entry


class RaftLogError(Exception):
    """An operation that would break a Raft invariant (a bug in the caller, never peer input)."""


class RaftLog:
    """Entries after the snapshot, plus the bookkeeping the Ready/advance cycle needs.

    ``unstable_from``: first index not yet handed to the runtime in a Ready.
    ``persisted_index``: last index the runtime acknowledged as durable (matching this log).
    ``truncate_from``: lowest index removed since the last Ready, to delete from storage.
    """

    def __init__(self, snapshot_index: int, snapshot_term: int, entries: list[Entry]) -> None:
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self.entries: list[Entry] = []
        self.config_indexes: list[int] = []
        """Indexes of the configuration entries in ``entries``, ascending: the config in force
        is found by bisection instead of a scan of the whole log."""
        for i, e in enumerate(entries):
            if e.index != snapshot_index + 1 + i:
                raise RaftLogError(f"entries are not contiguous after {snapshot_index}: {e}")
            self._push(e)
        self.unstable_from = self.last_index + 1
        self.persisted_index = self.last_index
        self.truncate_from: int | None = None

    # -- queries -------------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.snapshot_index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot_term

    def term(self, index: int) -> int | None:
        """Term at ``index``; ``None`` when it is compacted away or beyond the end."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index:
            return None
        return self.entries[index - self.snapshot_index - 1].term

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.snapshot_index - 1]

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi (both within the stored range)."""
        if lo < self.first_index:
            raise RaftLogError(f"entry {lo} is compacted (first index {self.first_index})")
        off = self.snapshot_index + 1
        return self.entries[lo - off : hi - off]

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Election restriction (paper 5.4.1): is (last_term, last_index) at least ours?"""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest index <= ``index`` whose term is <= ``term`` (terms never decrease)."""
        index = min(index, self.last_index)
        while index > self.snapshot_index:
            t = self.term(index)
            if t is not None and t <= term:
                return index
            index -= 1
        return index

    # -- changes -------------------------------------------------------------------------

    def _push(self, e: Entry) -> None:
        self.entries.append(e)
        if isinstance(e.payload, ConfigEntry):
            self.config_indexes.append(e.index)

    def append(self, entries: list[Entry]) -> None:
        for e in entries:
            if e.index != self.last_index + 1:
                raise RaftLogError(f"append of {e.index} after {self.last_index}")
            self._push(e)

    def last_config_index(self, at_or_before: int | None = None) -> int | None:
        """The index of the latest configuration entry (at or before ``at_or_before``)."""
        if at_or_before is None:
            return self.config_indexes[-1] if self.config_indexes else None
        i = bisect_right(self.config_indexes, at_or_before)
        return self.config_indexes[i - 1] if i else None

    def maybe_append(self, prev_index: int, entries: tuple[Entry, ...], commit: int) -> int:
        """Append after a verified prev entry; truncate only at the first real conflict.

        Returns the index of the last entry now known to match the leader. Entries we already
        hold with the same term are kept (a reordered, older Replicate must not cut the log).
        """
        for e in entries:
            t = self.term(e.index)
            if t is None and e.index <= self.snapshot_index:
                continue  # compacted, hence committed, hence equal
            if t == e.term:
                continue
            if e.index <= commit:
                raise RaftLogError(f"conflict at committed index {e.index} (commit {commit})")
            if t is not None:
                self.truncate(e.index)
            self.append([x for x in entries if x.index >= e.index])
            break
        return prev_index + len(entries)

    def truncate(self, index: int) -> None:
        """Drop entries with index >= ``index``; storage deletes them on the next Ready."""
        del self.entries[index - self.snapshot_index - 1 :]
        del self.config_indexes[bisect_right(self.config_indexes, index - 1) :]
        self.unstable_from = min(self.unstable_from, index)
        self.persisted_index = min(self.persisted_index, index - 1)
        self.truncate_from = index if self.truncate_from is None else min(self.truncate_from, index)

    def compact(self, index: int) -> None:
        """Forget entries up to ``index`` (already applied and captured in a snapshot)."""
        if index <= self.snapshot_index:
            return
        if index > self.persisted_index:
            raise RaftLogError(f"compact({index}) beyond the durable log ({self.persisted_index})")
        term = self.term(index)
        assert term is not None
        del self.entries[: index - self.snapshot_index]
        del self.config_indexes[: bisect_right(self.config_indexes, index)]
        self.snapshot_index, self.snapshot_term = index, term

    def restore(self, index: int, term: int) -> None:
        """Replace the whole log by a snapshot ending at (index, term)."""
        self.entries = []
        self.config_indexes = []
        self.snapshot_index, self.snapshot_term = index, term
        self.unstable_from = index + 1
        self.persisted_index = index
        self.truncate_from = None

    def take_unstable(self) -> tuple[int | None, list[Entry]]:
        """Hand what storage must write to a Ready: (truncate_from, entries to append)."""
        trunc = self.truncate_from
        entries = self.entries[self.unstable_from - self.snapshot_index - 1 :]
        self.truncate_from = None
        self.unstable_from = self.last_index + 1
        return trunc, entries

    def has_unstable(self) -> bool:
        return self.truncate_from is not None or self.unstable_from <= self.last_index

    def stable_to(self, index: int, term: int) -> None:
        """Storage acknowledged entries up to (index, term); ignore it if since truncated."""
        if self.term(index) == term and index > self.persisted_index:
            self.persisted_index = index
