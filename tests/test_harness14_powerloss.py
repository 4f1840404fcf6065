"""The groups power-loss runner (``trio_broker.testing._powerloss_groups``): a seed replays
exactly, whatever the process ran or drew before it, and nothing the dying process does after
a cut reaches its disks.

A seed did not replay: the shared log draws a log id and each group file's incarnation with
``secrets.token_hex``, and a trim syncs the open group files in the order of their
incarnations, so a cut counted in sync points landed in another file from one process to the
next (seed 18 run after seed 17 in one process asked 2 operations of a dead disk, none run
alone; seeds 10, 13, 21, 28 and 29 of 1-30 ran other schedules from one process to the next).
The runner now draws those ids from the seed (``SeededIds``)."""

from __future__ import annotations

import random
import secrets
from pathlib import Path
from typing import Any

import apsw
import pytest

from trio_broker._storage import _shared_log
from trio_broker.testing._powerloss import PowerCut, PowerLossVFS, _PowerLossFile
from trio_broker.testing._powerloss_cluster import PowerLossFailure
from trio_broker.testing._powerloss_groups import GroupsCluster, run_seed


def test_a_seed_runs_one_schedule_whatever_ids_the_process_draws(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seed 17 (one cut, 40 steps: its trim's order decides where the cut lands) run twice,
    the process's ``secrets`` drawing other ids each time: the same run, count for count
    (before: 462 and 463 sync points). The module's ``secrets`` is put back after each."""
    runs = []
    for k in (1, 2):
        source = random.Random(k)
        monkeypatch.setattr(secrets, "token_hex", lambda n=32, r=source: r.randbytes(n).hex())
        runs.append(run_seed(17, cuts=1, steps_between=40))
        assert _shared_log.secrets is secrets
    assert runs[0] == runs[1]
    assert runs[0].cuts == 1 and runs[0].acked


def _leaky_after_the_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead disk that lets the dying process's writes, truncations and deletes through:
    the power-loss model broken as the check below must see it broken."""
    write, truncate, delete = _PowerLossFile.xWrite, _PowerLossFile.xTruncate, PowerLossVFS.xDelete

    def x_write(self: Any, data: bytes, offset: int) -> None:
        if self._vfs.dead:
            return apsw.VFSFile.xWrite(self, data, offset)
        return write(self, data, offset)

    def x_truncate(self: Any, size: int) -> None:
        if self._vfs.dead:
            return apsw.VFSFile.xTruncate(self, size)
        return truncate(self, size)

    def x_delete(self: Any, filename: str, syncdir: bool) -> None:
        if self.dead:
            return apsw.VFS.xDelete(self, filename, syncdir)
        return delete(self, filename, syncdir)

    monkeypatch.setattr(_PowerLossFile, "xWrite", x_write)
    monkeypatch.setattr(_PowerLossFile, "xTruncate", x_truncate)
    monkeypatch.setattr(PowerLossVFS, "xDelete", x_delete)


def _cut_inside_write_snapshot(root: Path) -> tuple[GroupsCluster, int]:
    """Seed 3 run 80 steps, then the power cut at the third sync point of a ``write_snapshot``
    (``VACUUM INTO``: its journal synced twice, then the new file): SQLite, told the sync
    failed, truncates the new file, tries the sync again and deletes its journal, each asked
    of the dead disk (returned: how many operations the statement asked of it after the
    cut)."""
    cluster = GroupsCluster(root, 3, faults=())
    for _ in range(80):
        cluster.step()
    assert any(cluster.acked.values())
    ignored = cluster.brokers["a"].vfs.ignored
    cluster.cut_at = cluster.syncs + 3
    with pytest.raises(PowerCut):
        cluster._send_snapshot("a", cluster.group_ids[0], "b")
    assert cluster.powered_off()
    return cluster, cluster.brokers["a"].vfs.ignored - ignored


def test_the_runner_fails_a_seed_if_anything_reaches_a_disk_after_the_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cut inside one SQLite statement lets the statement go on in SQLite's own cleanup (a
    runner cannot stop it from outside), but the dead disk ignores what it asks: the files
    are as the cut left them, which the runner now checks at every power cycle
    (``_powerloss.disk_image``). With a disk that let the dying statement's journal delete
    through, the power cycle fails naming that file (before: nothing looked, and the seed
    passed); with the real model it passes and the checks hold."""
    with monkeypatch.context() as leaky:
        _leaky_after_the_cut(leaky)
        cluster, _ = _cut_inside_write_snapshot(tmp_path / "leaky")
        try:
            with pytest.raises(PowerLossFailure, match=r"after the power went: .*-journal"):
                cluster.power_cycle()
        finally:
            cluster.close()
    cluster, asked = _cut_inside_write_snapshot(tmp_path / "real")
    try:
        assert asked == 3
        cluster.power_cycle()
        cluster.check()
    finally:
        cluster.close()
