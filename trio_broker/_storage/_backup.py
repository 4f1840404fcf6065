"""Backups of a broker's data, and restoring one as the first broker of a recovered cluster.

A backup is a consistent copy of one broker's SQLite database, taken while the broker runs
(WAL readers never block the writer, and ``VACUUM INTO`` reads one transaction's snapshot).

A backup is *not* put back under a running cluster: the copy has forgotten the votes and log
entries its broker wrote after it was taken, and a Raft member that forgets a vote can help
elect two leaders in one term. Restoring therefore starts a new cluster history from the
backup's applied state: the same cluster id (queue ids embed it, so clients keep working), a
new broker id, the only voter, with a snapshot at the backup's applied index and an empty
log. Other brokers then join it (``node --seed``) and receive that snapshot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import apsw
import attrs

from .._core._raft_messages import Config
from ._failed import refuse_if_failed
from ._files import DB_FILES
from ._integrity import StorageDamaged
from ._store import DB_FILE, Store, _config_from_json, _config_to_json


class BackupError(Exception):
    """A backup or a restore that cannot be done; the message says why."""


@attrs.frozen
class BackupInfo:
    broker_id: str
    cluster_id: str
    applied_index: int
    queues: int
    messages: int


def backup(data_dir: Path | str, output: Path | str) -> BackupInfo:
    """Copy the database of the broker in ``data_dir`` (running or not) to ``output``."""
    # A write failed there (STORAGE-FAILED): what the files hold proves nothing, and a restore
    # would start a cluster on it with no mark left (docs/reliability.md, "A failed fsync
    # stops the broker": a backup taken before the failure, not after).
    refuse_if_failed(data_dir)
    source = Path(data_dir) / DB_FILE
    target = Path(output)
    if not source.is_file():
        raise BackupError(f"no broker database at {source}")
    if target.exists():
        raise BackupError(f"{target} exists; a backup never overwrites a file")
    # Read-only: SQLite then writes neither the database file nor its WAL (it reads a WAL
    # database read-only since 3.22, rebuilding the wal-index in the -shm if need be). A
    # read-write connection that is the last to close the database (a stopped or crashed
    # broker's) runs SQLite's own closing checkpoint: it writes and syncs the source, drops
    # a failed fsync's error (our hook, _checkpoint, is not on it) and deletes the WAL.
    # No checkpoint on close either way (a read-only one cannot run one; said, not assumed).
    db = apsw.Connection(str(source), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        db.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        db.setbusytimeout(5000)
        db.execute("VACUUM INTO ?", (str(target),))
    finally:
        db.close()
    _fsync_file_and_dir(target)
    return describe(target)


def describe(path: Path | str) -> BackupInfo:
    """What a backup (or a stopped broker's database) holds."""
    try:
        db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.CantOpenError:
        raise BackupError(f"cannot open {path}") from None
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if "broker_id" not in meta or "cluster_id" not in meta:
            raise BackupError(f"{path} is not a trio_broker database with an identity")
        (queues,) = db.execute("SELECT count(*) FROM queues").fetchone()
        (messages,) = db.execute("SELECT count(*) FROM queue_data").fetchone()
    except (apsw.SQLError, apsw.NotADBError, apsw.CorruptError) as exc:
        raise BackupError(f"{path} is not a trio_broker database: {exc}") from None
    finally:
        db.close()
    applied = meta.get("applied_index", meta.get("snapshot_index", 0))
    return BackupInfo(meta["broker_id"], meta["cluster_id"], applied, queues, messages)


def restore(backup_path: Path | str, data_dir: Path | str, broker_id: str) -> BackupInfo:
    """Make ``data_dir`` the data of broker ``broker_id``, sole voter of the backup's cluster,
    holding the backup's applied state. ``data_dir`` must not hold a database yet."""
    source = Path(backup_path)
    target_dir = Path(data_dir)
    describe(source)  # refuses what is not a backup
    if (target_dir / DB_FILE).exists():
        raise BackupError(f"{target_dir} already holds a broker database; restore into a new one")
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in DB_FILES[1:]:
        # A WAL without its database (a clean stop keeps the WAL: _checkpoint) is of no
        # database here: SQLite would apply its frames to the restored file.
        (target_dir / name).unlink(missing_ok=True)
    partial = target_dir / (DB_FILE + ".restoring")
    shutil.copyfile(source, partial)
    # The copy is fsynced before it takes the database's name, and the rename before the
    # store opens it: otherwise a power cut could leave a database file whose pages were
    # never written, under a name that says it is whole. (The store then commits the reset
    # below at synchronous=FULL, and its first checkpoint syncs the database file again.)
    _fsync_file_and_dir(partial)
    os.replace(partial, target_dir / DB_FILE)
    _fsync_file_and_dir(target_dir / DB_FILE)
    try:
        store = Store(target_dir)  # takes the directory lock and upgrades an older schema
        try:
            for queue_id in store.queue_lengths():  # every value against its checksum
                store.messages(queue_id)
            _reset_as_sole_voter(store, broker_id)
        finally:
            store.close()
    except StorageDamaged as exc:
        # The copy is this command's own file: it goes; the backup is left as it was.
        for name in DB_FILES:
            (target_dir / name).unlink(missing_ok=True)
        raise BackupError(f"the backup {source} is damaged, nothing was restored: {exc}") from None
    return describe(target_dir / DB_FILE)


def _reset_as_sole_voter(store: Store, broker_id: str) -> None:
    """The restore step inside the database, in one transaction (see :func:`restore`): the
    applied state becomes the snapshot, the log and the vote are dropped, the term is kept."""
    db = store._db
    with db:
        get = store.get_meta
        applied = get("applied_index", get("snapshot_index", 0))
        row = db.execute("SELECT term FROM raft_log WHERE log_index = ?", (applied,)).fetchone()
        applied_term = row[0] if row is not None else get("snapshot_term", 0)
        old_json = get("snapshot_config")
        old = _config_from_json(old_json) if old_json is not None else Config(frozenset())
        config = Config(voters=frozenset({broker_id}), version=old.version + 1)
        db.execute("DELETE FROM raft_log")
        store._set_meta(
            {
                "broker_id": broker_id,
                "raft_term": get("raft_term", 0),
                "raft_voted_for": None,
                "raft_term_vote_crc": None,  # (the vote is dropped on purpose: no loss)
                "raft_commit": applied,
                "snapshot_index": applied,
                "snapshot_term": applied_term,
                "snapshot_config": _config_to_json(config),
                "applied_index": applied,
            }
        )


def _fsync_file_and_dir(path: Path) -> None:
    """Make a new file and its directory entry durable."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["BackupError", "BackupInfo", "backup", "describe", "restore"]
