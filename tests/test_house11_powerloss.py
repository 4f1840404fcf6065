"""The power-loss runners close a store whose disk lost its power as the runtime closes a
failed store (``testing._powerloss.close_after_cut``, ``Store.abandon``): no closing
checkpoint, nothing asked of the dead disk, the WAL and ``-shm`` left as the cut left them,
no ``STORAGE-FAILED`` mark and no ``storage.failed`` line; the folder opens again in the same
process and every acknowledged append is there. ``Store.close`` there ran its checkpoint into
the dead disk (ignored writes and syncs) and deleted the ``-shm`` for real."""

from __future__ import annotations

import random
from pathlib import Path

import apsw
import pytest

from tests.test_power_loss import Leader, check
from trio_broker._storage._failed import FAILED_FILE
from trio_broker._storage._files import DB_FILE
from trio_broker.testing._powerloss import PowerLossVFS, close_after_cut
from trio_broker.testing._powerloss_cluster import IDS, PowerLossCluster


def _cut_live(path: Path, vfs: PowerLossVFS) -> Leader:
    """A single broker's storage, appending until its disk's power goes (mid-transaction)."""
    leader = Leader(path, vfs.name, random.Random(5), vfs)
    leader.start()
    vfs.cut_at_sync = vfs.syncs + 40
    with pytest.raises(apsw.Error):
        for _ in range(1000):
            leader.step()
    assert vfs.dead
    return leader


def test_a_cut_store_closes_asking_nothing_of_the_dead_disk(tmp_path, caplog):
    vfs = PowerLossVFS("house11-close-after-cut", rng=random.Random(5))
    path = tmp_path / "broker"
    try:
        leader = _cut_live(path, vfs)
        acked = list(leader.acked)
        asked, files = vfs.ignored, sorted(p.name for p in path.iterdir())
        assert f"{DB_FILE}-wal" in files and f"{DB_FILE}-shm" in files
        assert leader.store is not None
        close_after_cut(leader.store)
        leader.store = None
        # Nothing written, synced or deleted after the cut; the files as the cut left them.
        assert vfs.ignored == asked
        assert sorted(p.name for p in path.iterdir()) == files
        assert FAILED_FILE not in files
        vfs.power_on()
        # The lock went with the process: the same process opens the folder again.
        check(path, acked, vfs.name).close()
        assert "storage.failed" not in caplog.text
        assert not any(r.levelname == "CRITICAL" for r in caplog.records)
    finally:
        vfs.unregister()


def test_the_cluster_runners_power_cycle_asks_nothing_of_the_dead_disks(tmp_path, caplog):
    """A whole-cluster cut, then the runner's restart: no store's close asks anything of its
    dead disk, none marks its folder, and the checks after the restart pass."""
    cluster = PowerLossCluster(tmp_path, 3, autocheckpoint=100)
    try:
        cluster.check()
        cluster.cut_at = cluster.syncs + 150
        with pytest.raises(apsw.Error):
            for _ in range(10_000):
                cluster.step()
        assert cluster.powered_off()
        asked = {i: cluster.vfs[i].ignored for i in IDS}
        cluster.power_cycle()
        assert {i: cluster.vfs[i].ignored for i in IDS} == asked
        assert not any((tmp_path / i / FAILED_FILE).exists() for i in IDS)
        cluster.check()
        assert cluster.acked
        assert not any(r.levelname == "CRITICAL" for r in caplog.records)
    finally:
        cluster.close()
