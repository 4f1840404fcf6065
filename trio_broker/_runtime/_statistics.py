"""A broker's statistics: one frozen snapshot of what it reports about itself.

Metrics (and tests) read :class:`BrokerStatistics`, never the broker's private state.
"""

from __future__ import annotations

import attrs

from ._driver import RaftDriver


@attrs.frozen
class BrokerStatistics:
    """What a broker reports about itself at one instant (metrics read this, nothing else)."""

    connections: int
    role: str
    term: int
    commit_index: int
    applied_index: int
    pending_proposals: int
    elections_won: int
    transactions: int
    """SQLite transactions of the consensus driver (those that only apply are not fsynced)."""
    entries_applied: int
    commands_applied: int
    """Queue commands applied: an entry holds one, or a group of many (proposal batching)."""
    transfers_completed: int = 0
    """Leadership transfers this broker started as leader that ended with the target leading."""
    transfers_received: int = 0
    """Elections this broker won because a leader handed over to it (TIMEOUT_NOW)."""
    transfers_started: int = 0
    transfers_aborted: int = 0
    cluster_version: int = 0
    log_entries: int = 0
    """Entries kept in the log (after the last compaction)."""
    members_active: int = 0
    members_inactive: int = 0
    replication_lag: tuple[tuple[str, int], ...] = ()
    """Leader only: (member, log entries it does not have yet), by member id."""
    peers_dropped: tuple[tuple[str, int], ...] = ()
    """(peer, consensus messages dropped while it was unreachable or its outbox full)."""
    recovering_until: int | None = None
    """While this broker's log lacks entries it had acknowledged (damaged, or lost by its disk):
    the index a leader must bring it back to; it neither leads nor vouches for a log behind it
    meanwhile (docs/reliability.md, "Damaged and shortened logs"). None: not recovering."""
    unverified: bool = False
    """Its machine rebooted and it has not yet learned what it may have acknowledged before
    (its disk may have lost synced writes): it grants no vote and does not count its own
    (docs/reliability.md, "A reboot votes only once it knows")."""
    disk_state: str = "ok"
    """``ok``; ``low``: free space below the reserve, writes that add data are refused;
    ``full``: a write failed for lack of space, every write is refused until it succeeds."""
    disk_free_bytes: int | None = None
    """Free space on the data directory's filesystem at the last measure (None: not yet)."""
    disk_reserve_bytes: int = 0
    disk_write_failures: int = 0
    """Storage transactions that failed for lack of space (rolled back, then retried)."""


def statistics_of(driver: RaftDriver, connections: int) -> BrokerStatistics:
    """A broker's statistics, read from its driver (and its count of open connections)."""
    node = driver.node
    transfers = driver.leadership.transfers
    statuses = [view.status for view in node.member_statuses().values()]
    lag: tuple[tuple[str, int], ...] = ()
    if node.is_leader:
        last = node.log.last_index
        lag = tuple(
            (peer, max(0, last - progress.match))
            for peer, progress in sorted(node.progress.items())
            if peer != driver.broker_id
        )
    peers = driver.peers
    links = peers.statistics().links if peers is not None else ()
    dropped = tuple((link.peer, link.dropped) for link in links)
    return BrokerStatistics(
        connections=connections,
        role=node.role.value,
        term=node.term,
        commit_index=node.commit,
        applied_index=node.applied,
        pending_proposals=driver.pending,
        elections_won=driver.leadership.elections_won,
        transactions=driver.transactions,
        entries_applied=driver.entries_applied,
        commands_applied=driver.commands_applied,
        transfers_completed=transfers["completed"],
        transfers_received=transfers["received"],
        transfers_started=transfers["started"],
        transfers_aborted=transfers["aborted"],
        cluster_version=node.cluster_version,
        log_entries=node.log.last_index - node.log.snapshot_index,
        members_active=statuses.count("active"),
        members_inactive=statuses.count("inactive"),
        replication_lag=lag,
        peers_dropped=dropped,
        recovering_until=node.recovering_until,
        unverified=node.unverified,
        disk_state=driver.disk.state.value,
        disk_free_bytes=driver.disk.free_bytes,
        disk_reserve_bytes=driver.disk.reserve_bytes,
        disk_write_failures=driver.disk.write_failures,
    )
