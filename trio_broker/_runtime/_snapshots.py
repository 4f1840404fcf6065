"""Compaction and snapshots: the driver's room for shortening the log and for moving a whole
state machine between brokers.

Compaction cuts the core's in-memory log once enough of it is applied (a count of entries or
of message bytes), and the store's log in a storage job after it. A leader whose follower is
behind its log writes a snapshot file and offers it in a DATA_SYNC; the follower fetches it
chunk by checked chunk (:mod:`._snapshot_fetch`, over ``_dial.py``) and steps the core with
the downloaded file's path, which the next Ready installs.

This room reads the driver through :class:`SnapshotHost` (the core it drives is rebuilt after a
crash, and its peer links exist only while it runs), so nothing here imports the driver back.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from .._core import _raft as raft
from .._core._append_columns import AppendColumns
from .._core._commands import AppendMessage, CommandGroup, ReadNext, data_size
from .._core._raft_messages import DataSync, Entry, SnapshotMeta
from .._errors import BrokerError, ErrorCode
from .._protocol import FetchValues, StoredValues
from .._storage import StorageWorker, Store
from .._storage._file_checks import (
    UPGRADE_DAMAGE_ERRORS,
    check_received_file,
    check_snapshot_file,
)
from .._storage._integrity import StorageDamaged
from .._storage._schema import SCHEMA_VERSION, SchemaTooNew, upgrade_file
from ._config import BrokerConfig
from ._disk_space import DiskSpace, is_disk_full
from ._log import log_event
from ._network import Network
from ._snapshot_fetch import fetch_snapshot

SNAPSHOT_CHUNK = 256 * 1024
SNAPSHOTS_KEPT = 2
ASKED_INTERVAL = 10.0
"""A member that asks for this leader's snapshot (``offer_asked``) gets at most one offer per
this many seconds: each offer writes the whole state to a file."""


class Settable(Protocol):
    """Where an operator's snapshot request is answered (the driver's ``Pending``)."""

    def set(self, result: Any) -> None: ...


class Sender(Protocol):
    def send(self, message: Any) -> None: ...


HELD_PER_COMMAND = 192
"""Bytes a command held in the in-memory log costs beyond what ``data_size`` counts for it
(the count of a group gives each command 64): a decoded APPEND of 100 bytes holds about 326
bytes and a READ about 196 (``tracemalloc``, docs/performance-history.md, "Peak broker RSS"), so
64 + 192 per command bounds both."""


def held_size(payload: object) -> int:
    """What an entry's payload holds in memory, at least: its ``data_size`` and
    :data:`HELD_PER_COMMAND` per command. Compaction counts this against ``compact_bytes``, so
    the log's memory follows the setting whatever the commands' mix (with ``data_size``
    alone a log of READs held about three times the setting).

    A group's usual commands are counted here without a call each (``data_size`` of an
    APPEND_MESSAGE is its data's length, of a single READ nothing): the same count."""
    if type(payload) is CommandGroup:
        group = payload.commands
        size = (64 + HELD_PER_COMMAND) * len(group)
        if type(group) is AppendColumns:  # (a replica's decoded appends: their bytes alone)
            return size + group.data_bytes()
        for command in group:
            if type(command) is AppendMessage:
                size += len(command.data)
            elif type(command) is not ReadNext:
                size += data_size(command)
        return size
    commands = len(payload.commands) if isinstance(payload, CommandGroup) else 1
    return data_size(payload) + HELD_PER_COMMAND * commands


class SnapshotHost(Protocol):
    """What the snapshot room reads of the driver that owns it."""

    node: raft.RaftNode
    network: Network
    disk: DiskSpace
    cluster_id: str
    secret: bytes | None

    @property
    def peers(self) -> Sender | None: ...

    def address_of(self, broker_id: str) -> tuple[str, int] | None: ...

    def wake(self) -> None: ...

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None: ...


class Snapshots:
    """Compaction of the log, and the snapshots this broker offers and fetches."""

    def __init__(
        self, host: SnapshotHost, config: BrokerConfig, store: Store, worker: StorageWorker
    ) -> None:
        self._host = host
        self._config = config
        self._store = store
        self._worker = worker
        self._dir = Path(config.data_dir) / "snapshots"
        # Snapshots are offered and fetched by one broker run; leftovers are stale, with the
        # journal of a received one whose upgrade a crash interrupted (_snapshot_intact).
        if self._dir.is_dir():
            for stale in self._dir.glob("*.sqlite3*"):
                stale.unlink(missing_ok=True)
        self._offered: dict[str, tuple[Path, int, str]] = {}
        self._fetching: set[str] = set()
        self._asked: dict[str, float] = {}
        """Member -> when it last asked for a snapshot that was offered (at most one entry
        per member of the group)."""
        self.applied_bytes = 0
        """Bytes the applied entries since the last compaction hold in memory, as
        :func:`held_size` counts them (approximate)."""

    def note_applied(self, committed: Sequence[Entry]) -> None:
        self.applied_bytes += sum(held_size(e.payload) for e in committed)

    # -- compaction ------------------------------------------------------------------------------

    def maybe_compact(self) -> None:
        """Compact when the applied log passes ``compact_threshold`` entries beyond those kept,
        or ``compact_bytes`` of message data (the log is held in memory)."""
        node = self._host.node
        config = self._config
        log = node.log
        applied = node.applied
        keep = config.compact_keep
        over_bytes = self.applied_bytes >= config.compact_bytes
        if not over_bytes and applied - log.snapshot_index < config.compact_threshold + keep:
            return
        index = applied - keep
        if over_bytes:
            # Keep fewer entries when they are large: at most a quarter of the byte budget.
            index, kept = applied, 0
            while index > log.snapshot_index and applied - index < keep:
                size = held_size(log.entry(index).payload)
                if kept + size > config.compact_bytes // 4:
                    break
                kept += size
                index -= 1
        term = log.term(index) if index > log.snapshot_index else None
        if term is None:
            if over_bytes:  # the count was stale: the log holds less than it said
                held = log.slice(log.snapshot_index + 1, applied + 1)
                self.applied_bytes = sum(held_size(e.payload) for e in held)
            return
        meta = SnapshotMeta(index, term, node._config_at(index))
        node.compact(index)
        self.applied_bytes = sum(held_size(e.payload) for e in log.slice(index + 1, applied + 1))
        self._host.start_soon(self._compact_storage, meta)

    def compact_now(self, requests: Sequence[Settable]) -> None:
        """The operator's SNAPSHOT: compact up to the applied index, then answer ``requests``
        with the snapshot's (index, term) once storage holds it. Called when no Ready is
        outstanding (storage has applied exactly the core's ``applied``)."""
        node = self._host.node
        log = node.log
        index = node.applied
        term = log.term(index)
        if index <= log.snapshot_index or term is None:
            for pending in requests:
                pending.set((log.snapshot_index, log.snapshot_term))
            return
        meta = SnapshotMeta(index, term, node._config_at(index))
        node.compact(index)
        self.applied_bytes = 0  # nothing applied is left in the log
        self._host.start_soon(self._compact_storage, meta, requests)

    async def _compact_storage(self, meta: SnapshotMeta, requests: Sequence[Settable] = ()) -> None:
        compact = functools.partial(self._worker.run, self._store.compact, meta)
        await self._host.disk.retrying(compact)  # (a later compaction covers it: never moves back)
        log_event(logging.INFO, "log.compacted", upto=meta.index, term=meta.term)
        for pending in requests:
            pending.set((meta.index, meta.term))

    # -- the leader's side -----------------------------------------------------------------------

    async def offer(self, peer: str) -> None:
        """Write a snapshot of the state machine and offer it to ``peer`` in a DATA_SYNC."""
        snapshot_id = secrets.token_hex(8)
        path = self._dir / f"{snapshot_id}.sqlite3"
        try:
            self._dir.mkdir(exist_ok=True)
            index = await self._worker.run(self._store.write_snapshot, str(path))
        except Exception as exc:
            path.unlink(missing_ok=True)  # a partial copy would keep the space it took
            if not is_disk_full(exc):
                raise
            # Offered again once the peer's progress times out (the core asks again).
            log_event(logging.WARNING, "snapshot.not_offered", peer=peer, reason="disk full")
            return
        digest = await trio.to_thread.run_sync(sha256_file, path)
        size = path.stat().st_size
        self._offered[snapshot_id] = (path, size, digest)
        while len(self._offered) > SNAPSHOTS_KEPT:
            old = next(iter(self._offered))
            old_path, _, _ = self._offered.pop(old)
            old_path.unlink(missing_ok=True)
        try:
            message = self._host.node.make_data_sync(
                peer, index, {"snapshot_id": snapshot_id, "size": size, "sha256": digest}
            )
        except raft.UsageError as exc:  # the log was compacted past it meanwhile
            log_event(logging.WARNING, "snapshot.not_offered", peer=peer, reason=str(exc))
            return
        peers = self._host.peers
        assert peers is not None
        peers.send(message)
        log_event(logging.INFO, "snapshot.offered", peer=peer, index=index, size=size)

    def offer_asked(self, request: FetchValues) -> StoredValues | BrokerError:
        """A member holds a transaction that reads a stored value no member holds any more
        (FETCH_VALUES with ``snapshot_for``): offer it this leader's snapshot, whose state
        stands in for that transaction (``RaftNode.want_snapshot``; docs/reliability.md, "A
        value nobody holds any more"); at most one offer per member per ``ASKED_INTERVAL``."""
        node = self._host.node
        peer = request.snapshot_for
        if not node.is_leader:
            return BrokerError(ErrorCode.NOT_LEADER, "only the leader offers its snapshot")
        if peer == node.id or peer not in node.config.members:
            return BrokerError(ErrorCode.BAD_REQUEST, f"{peer!r} is not another member")
        now = trio.current_time()
        for member in [m for m in self._asked if m not in node.config.members]:
            del self._asked[member]
        if now - self._asked.get(peer, -ASKED_INTERVAL) >= ASKED_INTERVAL:
            self._asked[peer] = now
            log_event(logging.INFO, "snapshot.asked", peer=peer, queue=request.queue_name)
            self._host.start_soon(self.offer, peer)
        return StoredValues(request.queue_name, "[]")

    def read_snapshot_chunk(self, snapshot_id: str, offset: int) -> tuple[bytes, int, str] | None:
        """One chunk of a snapshot this broker offered: (bytes, whole size, the bytes' sha256),
        or None for a snapshot it does not hold (run in a thread)."""
        entry = self._offered.get(snapshot_id)
        if entry is None:
            return None
        path, size, _ = entry
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read(SNAPSHOT_CHUNK)
        return chunk, size, hashlib.sha256(chunk).hexdigest()

    # -- the follower's side ---------------------------------------------------------------------

    def start_fetch(self, message: DataSync) -> None:
        """Fetch one offered snapshot at a time: offers repeated while a large transfer is
        under way (the leader retries after an election timeout) are ignored, not stacked."""
        snapshot_id = message.data.get("snapshot_id") if isinstance(message.data, dict) else None
        if not isinstance(snapshot_id, str) or self._fetching:
            return
        self._fetching.add(snapshot_id)
        self._host.start_soon(self._fetch, message, snapshot_id)

    async def _fetch(self, message: DataSync, snapshot_id: str) -> None:
        host = self._host
        try:
            address = host.address_of(message.src)
            if address is None:
                log_event(logging.WARNING, "snapshot.no_address", leader=message.src)
                return
            self._dir.mkdir(exist_ok=True)
            path = self._dir / f"incoming-{snapshot_id}.sqlite3"
            ok = await fetch_snapshot(
                host.network, address, host.cluster_id, message.data, path, host.secret
            )
            if not ok:
                path.unlink(missing_ok=True)  # (on a full disk, a partial file keeps its space)
            if ok and not await self._worker.run(_snapshot_intact, str(path)):
                await trio.Path(path).unlink(missing_ok=True)  # fetched again at the next offer
                ok = False
            if ok:
                log_event(
                    logging.INFO,
                    "snapshot.received",
                    leader=message.src,
                    index=message.snapshot.index,
                    size=path.stat().st_size,
                )
                # The same offer, now holding the downloaded file: the next Ready installs it.
                host.node.step(attrs.evolve(message, data=str(path)))
                host.wake()
        finally:
            self._fetching.discard(snapshot_id)


def _snapshot_intact(path: str) -> bool:
    """Whether every value of a received snapshot matches its checksum (docs/reliability.md,
    "Damaged data"); a damaged one is logged and never handed to the core. A snapshot of an
    older schema version (from a leader not yet upgraded) is upgraded first, as a store's own
    file is when it opens; one of a newer version (from a leader already upgraded, to this
    broker not yet) is logged and dropped (docs/operations.md, "Upgrade one broker at a
    time")."""
    try:
        check_received_file(path)  # (before the upgrade, as a store checks its own file)
        found = upgrade_file(path)
    except SchemaTooNew as exc:
        log_event(logging.ERROR, "snapshot.too_new", path=path, error=str(exc))
        return False
    except (StorageDamaged, *UPGRADE_DAMAGE_ERRORS) as exc:
        log_event(logging.ERROR, "snapshot.damaged", path=path, error=str(exc))
        return False
    except Exception as exc:
        # The upgrade writes a second copy of the rows into the file: on a full disk, the
        # snapshot is dropped and fetched again at the next offer, as when its download runs
        # out of space (SQLite rolled the upgrade back).
        if not is_disk_full(exc):
            raise
        log_event(logging.WARNING, "snapshot.not_installed", path=path, reason="disk full")
        return False
    if found != SCHEMA_VERSION:
        log_event(logging.INFO, "snapshot.upgraded", path=path, version=found)
    try:
        check_snapshot_file(path)
    except StorageDamaged as exc:
        log_event(logging.ERROR, "snapshot.damaged", path=path, error=str(exc))
        return False
    return True


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


__all__ = ["SNAPSHOT_CHUNK", "SnapshotHost", "Snapshots", "sha256_file"]
