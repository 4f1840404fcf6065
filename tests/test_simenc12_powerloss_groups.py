"""The groups power-loss runner (``trio_broker.testing._powerloss_groups``) closes what a power
cut killed as a dead process leaves it, as the cluster runner does
(``testing._powerloss.close_after_cut``, ``SharedLog.abandon``): after a cut, its restart
asks nothing of the dead disks, writes no ``STORAGE-FAILED`` mark and logs no
``storage.failed`` line, and a cut that lands in a group's close (the driver's reopen) leaves
neither. Before, ``Store.close`` and ``SharedLog.close`` ran their checkpoints into the dead
disks (ignored writes and syncs), and a close the cut met marked the group's folder with
plain file calls, which the power-on kept, and logged a CRITICAL line."""

from __future__ import annotations

import logging
from pathlib import Path

import apsw
import pytest

from trio_broker._storage._failed import FAILED_FILE
from trio_broker.testing._powerloss_cluster import IDS
from trio_broker.testing._powerloss_groups import GroupsCluster


def _ignored(cluster: GroupsCluster) -> dict[str, int]:
    return {i: cluster.brokers[i].vfs.ignored for i in IDS}


def _marks(root: Path) -> list[Path]:
    return sorted(root.rglob(FAILED_FILE))


def test_the_groups_runners_power_cycle_asks_nothing_of_the_dead_disks(tmp_path, caplog):
    """A cut of every disk mid-turn, then the runner's restart: no store's or shared log's
    close asks anything of its dead disk, none marks a folder, and the checks pass."""
    cluster = GroupsCluster(tmp_path, 3, faults=())
    try:
        cluster.check()
        cluster.cut_at = cluster.syncs + 60
        with pytest.raises(apsw.Error):
            for _ in range(5_000):
                cluster.step()
        assert cluster.powered_off()
        asked = _ignored(cluster)
        cluster.power_cycle()
        assert _ignored(cluster) == asked
        assert _marks(tmp_path) == []
        cluster.check()
        assert any(cluster.acked.values())
        assert not any(r.levelname == "CRITICAL" for r in caplog.records)
    finally:
        cluster.close()


def test_a_cut_in_a_groups_close_leaves_no_mark_and_no_critical_line(tmp_path, caplog):
    """The driver's reopen closes a group's store (``Store.close``) and the power goes at its
    first sync (its shared-log sync): the process died there, so nothing more reaches the
    disks, no mark is left and nothing is logged; the restart finds every acknowledged
    append."""
    caplog.set_level(logging.INFO, logger="trio_broker")
    cluster = GroupsCluster(tmp_path, 3, faults=())
    try:
        for _ in range(80):
            cluster.step()
        assert any(cluster.acked.values())
        at_cut: dict[str, int] = {}
        for broker in cluster.brokers.values():
            on_sync = broker.vfs.on_sync

            def noted(on_sync=on_sync):
                assert on_sync is not None
                on_sync()
                if cluster.powered_off() and not at_cut:
                    at_cut.update(_ignored(cluster))

            broker.vfs.on_sync = noted
        cluster.cut_at = cluster.syncs + 1
        cluster.rng.random = lambda: 0.0  # type: ignore[method-assign]  # (a reopen)
        with pytest.raises(apsw.Error):
            cluster._driver_failed("a", cluster.group_ids[0])
        assert cluster.powered_off() and at_cut
        assert _ignored(cluster) == at_cut
        assert _marks(tmp_path) == []
        assert "storage.failed" not in caplog.text
        assert not any(r.levelname == "CRITICAL" for r in caplog.records)
        del cluster.rng.random
        cluster.power_cycle()
        assert _marks(tmp_path) == []
        cluster.check()
    finally:
        cluster.close()
