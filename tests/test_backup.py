"""Backups taken from a running broker, and a recovered cluster started from one."""

from __future__ import annotations

import pytest
import trio

from trio_broker._cli import main
from trio_broker._storage import DB_FILE, Store
from trio_broker._storage._backup import BackupError, backup, describe, restore
from trio_broker.testing import open_local_cluster

from .test_cluster import DEADLINE, stored_messages, wait_applied
from .wire import append, call, create_queue


async def read(port: int, queue_id: str, client_id: str) -> dict:
    return await call(port, {"operation": "READ", "queue_name": queue_id, "client_id": client_id})


async def test_a_backup_restores_as_a_new_cluster_with_data_and_positions(tmp_path):
    with trio.fail_after(DEADLINE * 2):
        async with open_local_cluster(tmp_path / "old", 3) as cluster:
            leader = await cluster.wait_for_leader()
            queue_id = await create_queue(leader.port)
            for i in range(10):
                await append(leader.port, queue_id, i)
            for i in range(4):
                assert (await read(leader.port, queue_id, "C-READ1"))["data"] == i
            # Taken while the brokers run, from the leader's data folder.
            info = await trio.to_thread.run_sync(
                backup, leader.config.data_dir, tmp_path / "b.sqlite3"
            )
            old_broker, old_cluster = leader.broker_id, leader.cluster_id
            await append(leader.port, queue_id, "after the backup")
        assert (info.broker_id, info.cluster_id, info.queues, info.messages) == (
            old_broker,
            old_cluster,
            1,
            10,
        )

        new = tmp_path / "new"
        restored = restore(tmp_path / "b.sqlite3", new / "r1", "B-RSTR1")
        assert restored.broker_id == "B-RSTR1" and restored.cluster_id == old_cluster
        async with open_local_cluster(new, 0) as recovered:
            first = await recovered.start("r1")
            assert first.broker_id == "B-RSTR1" and first.cluster_id == old_cluster
            await recovered.wait_for_leader()
            assert first.is_leader
            assert first.node.config.voters == {"B-RSTR1"}
            # The data and the read position are the backup's; numbering carries on.
            assert await stored_messages(first, queue_id) == [b"%d" % i for i in range(10)]
            assert (await read(first.port, queue_id, "C-READ1"))["data"] == 4
            assert await append(first.port, queue_id, "recovered") == 11
            # A new broker joins the recovered cluster and receives its state as a snapshot.
            second = await recovered.start("r2")
            await wait_applied(second, first.node.commit)
            assert second.node.log.snapshot_index > 0
            expected = [b"%d" % i for i in range(10)] + [b'"recovered"']
            assert await stored_messages(second, queue_id) == expected
            view = await call(first.port, {"operation": "CLUSTER_QUERY"})
            assert {b["broker_id"] for b in view["brokers"]} == {"B-RSTR1", second.broker_id}


def test_backup_and_restore_refuse_what_they_cannot_do_and_change_nothing(tmp_path):
    store = Store(tmp_path / "a")
    store.init_identity("B-AAAAA", "G-AAAAA")
    store.close()
    with pytest.raises(BackupError, match="no broker database"):
        backup(tmp_path / "nothing", tmp_path / "x.sqlite3")
    (tmp_path / "taken.sqlite3").write_bytes(b"keep me")
    with pytest.raises(BackupError, match="never overwrites"):
        backup(tmp_path / "a", tmp_path / "taken.sqlite3")
    assert (tmp_path / "taken.sqlite3").read_bytes() == b"keep me"
    backup(tmp_path / "a", tmp_path / "b.sqlite3")
    assert describe(tmp_path / "b.sqlite3").broker_id == "B-AAAAA"
    with pytest.raises(BackupError, match="already holds"):
        restore(tmp_path / "b.sqlite3", tmp_path / "a", "B-BBBBB")
    assert describe(tmp_path / "a" / DB_FILE).broker_id == "B-AAAAA"
    with pytest.raises(BackupError, match="not a trio_broker database"):
        restore(tmp_path / "taken.sqlite3", tmp_path / "c", "B-BBBBB")
    assert not (tmp_path / "c" / DB_FILE).exists()


def test_backup_and_restore_from_the_command_line(tmp_path, capsys):
    store = Store(tmp_path / "a")
    store.init_identity("B-AAAAA", "G-AAAAA")
    store.close()
    assert main(["backup", "--data-dir", str(tmp_path / "a"), str(tmp_path / "b.sqlite3")]) == 0
    assert "backed up broker B-AAAAA of cluster G-AAAAA" in capsys.readouterr().out
    args = ["restore", str(tmp_path / "b.sqlite3"), "--data-dir", str(tmp_path / "r")]
    assert main([*args, "--broker-id", "nope"]) == 1
    assert "--broker-id must look like" in capsys.readouterr().err
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "restored cluster G-AAAAA" in out and "its only voter" in out
    assert main(args) == 1  # never over an existing database
    assert "already holds" in capsys.readouterr().err


def test_restore_makes_the_copy_durable_before_giving_it_the_database_name(tmp_path, monkeypatch):
    """A power cut after the rename must not leave a database name over unwritten pages: the
    copy and its directory are fsynced before ``os.replace``, and the rename after."""
    source = tmp_path / "b1"
    store = Store(source)
    store.init_identity("B-AAAAA", "G-AAAAA")
    store.close()
    backup(source, tmp_path / "backup.sqlite3")

    import trio_broker._storage._backup as backup_module

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = backup_module.os.fsync, backup_module.os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", backup_module.os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(backup_module.os, "fsync", fsync)
    monkeypatch.setattr(backup_module.os, "replace", replace)
    target = tmp_path / "restored"
    restore(tmp_path / "backup.sqlite3", target, "B-BBBBB")

    renamed = events.index(("replace", str(target / DB_FILE)))
    synced_before = {path for kind, path in events[:renamed] if kind == "fsync"}
    synced_after = {path for kind, path in events[renamed:] if kind == "fsync"}
    assert str(target / (DB_FILE + ".restoring")) in synced_before
    assert str(target) in synced_after
