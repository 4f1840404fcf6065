"""Durable queue storage in SQLite, through apsw. Synchronous: call it from one thread only.

Every acknowledged change is committed by :meth:`Store.apply` in one transaction with
``synchronous=FULL`` in WAL mode, so it is on disk (fsynced) before the call returns. Many
commands in one call share one transaction and one fsync: that is group commit.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw
import attrs

from .._core import (
    AppendMessage,
    Command,
    CreateQueue,
    MessageAppended,
    MessageRead,
    QueueCreated,
    ReadNext,
    Result,
)
from .._core._commands import queue_exists, queue_not_found
from ._schema import upgrade

DB_FILE = "broker.sqlite3"
LOCK_FILE = "LOCK"


class DataDirInUse(Exception):
    """Another process holds the data directory."""


@attrs.frozen
class Identity:
    broker_id: str
    cluster_id: str


class _DirLock:
    """An exclusive advisory lock on the data directory, held for the store's lifetime."""

    def __init__(self, directory: Path) -> None:
        path = directory / LOCK_FILE
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise DataDirInUse(
                    f"data directory {directory} is in use by another broker (pid {holder})"
                ) from None
            raise
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Store:
    """A broker's database: identity, queues, messages and read positions."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _DirLock(self.data_dir)
        try:
            self._db = apsw.Connection(str(self.data_dir / DB_FILE))
            self._configure()
            upgrade(self._db)
        except BaseException:
            self._lock.release()
            raise

    def _configure(self) -> None:
        db = self._db
        db.setbusytimeout(5000)
        (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode.lower() != "wal":
            raise RuntimeError(f"could not put the database in WAL mode (got {mode})")
        # FULL: the WAL is fsynced at every commit, so a commit that returned survives a crash
        # or power loss. Nothing is acknowledged before its commit returns.
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA cache_size = -16000")

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            self._lock.release()

    # -- identity and metadata ------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def identity(self) -> Identity | None:
        broker_id = self.get_meta("broker_id")
        cluster_id = self.get_meta("cluster_id")
        if broker_id is None or cluster_id is None:
            return None
        return Identity(broker_id, cluster_id)

    def init_identity(self, broker_id: str, cluster_id: str) -> Identity:
        """Store the identity on first start; later starts must agree with it."""
        with self._db:
            found = self.identity()
            if found is not None:
                return found
            self._db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("broker_id", broker_id), ("cluster_id", cluster_id), ("cluster_version", 1)],
            )
        return Identity(broker_id, cluster_id)

    # -- the state machine ----------------------------------------------------------------------

    def apply(self, commands: Sequence[Command]) -> list[Result]:
        """Apply commands in order in one durable transaction; one result per command.

        A command that is refused (unknown queue, say) changes nothing and yields a
        :class:`CommandRejected`; the others in the batch are applied regardless.
        """
        with self._db:
            return [self._apply_one(c) for c in commands]

    def _apply_one(self, command: Command) -> Result:
        db = self._db
        if isinstance(command, AppendMessage):
            row = db.execute(
                "UPDATE queues SET length = length + 1 WHERE queue_id = ? RETURNING length",
                (command.queue_id,),
            ).fetchone()
            if row is None:
                return queue_not_found(command.queue_id)
            db.execute(
                "INSERT INTO queue_data (queue_id, sequence_num, data) VALUES (?, ?, ?)",
                (command.queue_id, row[0], command.data),
            )
            return MessageAppended(row[0])
        if isinstance(command, ReadNext):
            row = db.execute(
                "SELECT q.length, coalesce(p.read_position, 0) FROM queues AS q"
                " LEFT JOIN client_positions AS p ON p.queue_id = q.queue_id AND p.client_id = ?"
                " WHERE q.queue_id = ?",
                (command.client_id, command.queue_id),
            ).fetchone()
            if row is None:
                return queue_not_found(command.queue_id)
            length, position = row
            if position >= length:
                return MessageRead(None, None)
            position += 1
            (data,) = db.execute(
                "SELECT data FROM queue_data WHERE queue_id = ? AND sequence_num = ?",
                (command.queue_id, position),
            ).fetchone()
            db.execute(
                "INSERT INTO client_positions (client_id, queue_id, read_position)"
                " VALUES (?, ?, ?) ON CONFLICT (client_id, queue_id)"
                " DO UPDATE SET read_position = excluded.read_position",
                (command.client_id, command.queue_id, position),
            )
            return MessageRead(position, data)
        if isinstance(command, CreateQueue):
            try:
                db.execute("INSERT INTO queues (queue_id) VALUES (?)", (command.queue_id,))
            except apsw.ConstraintError:
                return queue_exists(command.queue_id)
            return QueueCreated(command.queue_id)
        raise TypeError(f"not a command: {command!r}")

    # -- queries --------------------------------------------------------------------------------

    def queue_lengths(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT queue_id, length FROM queues ORDER BY queue_id"))

    def messages(self, queue_id: str) -> list[bytes]:
        return [
            row[0]
            for row in self._db.execute(
                "SELECT data FROM queue_data WHERE queue_id = ? ORDER BY sequence_num",
                (queue_id,),
            )
        ]

    def positions(self) -> dict[tuple[str, str], int]:
        return {
            (client_id, queue_id): position
            for client_id, queue_id, position in self._db.execute(
                "SELECT client_id, queue_id, read_position FROM client_positions"
            )
        }
