"""A fault-injecting SQLite VFS that simulates power loss: only what was fsynced survives.

:class:`PowerLossVFS` inherits from SQLite's default VFS and passes every operation through to
the real files, but remembers, for each file, what was written (or truncated) since that file's
last ``xSync``: an undo log holding the bytes each write replaced and the size before it. A
sync forgets that file's undo log: its content is now durable. :meth:`PowerLossVFS.cut` is the
power cut: from then on every write, sync, truncate and delete through the VFS does nothing,
successfully (so closing the connection cannot checkpoint, delete the WAL or write anything
else), and each file is put back to its last-synced content by replaying its undo log
backwards. This is what a disk may legally keep after a power loss (Jepsen's LazyFS behaves
the same way). With ``torn=True`` the cut also tears the last unsynced write of each file: a
sector-aligned prefix of it (part of a page) survives and the rest is lost.

Sync points are counted (:attr:`PowerLossVFS.syncs`) so that a test can cut the power at the
k-th one (``cut_at_sync=k``): the k-th ``xSync`` does not happen, the power goes instead, and
SQLite gets an I/O error.

A failed fsync (:attr:`PowerLossVFS.sync_fails`) comes in two models. By default the writes stay
pending: a later sync makes them durable. With ``drops=True`` (the "fsyncgate" model, what
Linux may do after ``EIO``: docs/reliability.md, "A failed fsync stops the broker") the failed
sync drops them from the disk: the kernel marks the pages clean without writing them, so reads
through the page cache still see them and a later sync succeeds without writing them. Each
byte range written since the file's last sync is then lost at the next cut (it rolls back to
what the disk held) unless a later write to it is synced.

What is not modelled:

- Directory entries. A created, deleted or renamed file is durable at once here, while a real
  filesystem may lose a file's directory entry unless the directory is fsynced. SQLite syncs
  the directory where it must (a new journal's first sync); this VFS does not test that.
- The ``-shm`` wal-index. SQLite maps it with ``xShmMap`` (passed through to the default VFS,
  never through ``xWrite``) and it is not a durability concern: the first connection to open a
  database after a crash takes the exclusive DMS lock, truncates the ``-shm`` file and
  rebuilds the index from the WAL. Close every connection before :meth:`power_on`, or a
  surviving in-process connection would keep the old, mapped index alive.
- Reordered or partial persistence of unsynced writes other than the torn last write: the cut
  loses all of them (the ``torn`` variant keeps a prefix of one per file).
- Temporary files (opened without a name or with delete-on-close): not durable anyway.

Usage::

    vfs = PowerLossVFS("powerloss-1", cut_at_sync=17)
    store = Store(path, vfs=vfs.name)
    ...                             # the 17th sync raises apsw.IOError: the power is cut
    close_after_cut(store)          # as the process's death: nothing written, lock gone
    vfs.power_on()                  # files now hold exactly what was synced
    store = Store(path, vfs=vfs.name)
    vfs.unregister()

A store whose disk lost power is closed with :func:`close_after_cut`, the way the runtime
closes a failed store (``Store.abandon``): no closing checkpoint. ``Store.close`` would run
one into the dead disk (every write ignored: :attr:`PowerLossVFS.ignored` counts them), and
then unmap and delete the ``-shm`` for real, which no machine that lost its power does.
"""

from __future__ import annotations

import os
import random
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import attrs

SECTOR = 512
"""The unit a torn write keeps: SQLite assumes sector-atomic writes (powersafe overwrite)."""


class PowerCut(apsw.IOError):
    """Raised by the sync at the cut point: SQLite sees an I/O error, and the caller of the
    statement gets this (an :class:`apsw.IOError`)."""


@attrs.define
class _Write:
    offset: int
    old: bytes
    """The bytes this write replaced (shorter than the write when it extended the file)."""
    old_size: int
    length: int


@attrs.define
class _Truncate:
    old_size: int
    new_size: int
    tail: bytes
    """The bytes the truncation removed."""


@attrs.define
class _FileState:
    """One path's unsynced history, kept across the handles that open it."""

    path: str
    undo: list[_Write | _Truncate] = attrs.field(factory=list)
    handles: int = 0
    dropped: list[tuple[int, bytes]] = attrs.field(factory=list)
    """Byte ranges a failed sync dropped (the fsyncgate model): (offset, what the disk holds
    there). A cut puts them back; a later synced write over a range takes it out."""


class PowerLossVFS(apsw.VFS):
    """The default VFS, with power cuts. See the module docstring."""

    def __init__(
        self,
        name: str = "powerloss",
        *,
        cut_at_sync: int | None = None,
        torn: bool = False,
        rng: random.Random | None = None,
        real_sync: bool = False,
        drops: bool = False,
    ) -> None:
        self.name = name
        self.real_sync = real_sync
        """Also fsync for real. Off by default: the VFS decides what survives its own power
        cuts, and a test machine's fsyncs only make the tests slow."""
        self.cut_at_sync = cut_at_sync
        """Cut the power instead of performing this sync (counted from 1), if set."""
        self.torn = torn
        self.rng = rng or random.Random(0)
        self.syncs = 0
        """Sync points reached so far (the cut one included)."""
        self.dead = False
        self.cuts = 0
        self.ignored = 0
        """Writes, truncations, syncs and deletes asked of this disk while its power was off
        (each did nothing), since it was made: what a process went on trying after the cut
        (:func:`close_after_cut` asks none)."""
        self.on_sync: Callable[[], None] | None = None
        """Called at every sync point, before the sync takes effect (and before a cut there):
        the moment to take a :meth:`crash_image`. It must not use SQLite."""
        self.sync_fails: Callable[[str], bool] | None = None
        """Asked at every sync point (with the file's path) after :attr:`on_sync`: True makes
        this ``xSync`` fail with an I/O error (``SQLITE_IOERR_FSYNC``: nothing synced; the
        writes stay unsynced, or with :attr:`drops` are dropped from the disk); the power
        stays on."""
        self.sync_errors = 0
        self.drops = drops
        """A failed sync drops the pending writes from the disk (see the module docstring)."""
        self.dropped_bytes = 0
        """Bytes a failed sync dropped so far (the fsyncgate model)."""
        self._files: dict[str, _FileState] = {}
        super().__init__(name, "")

    # -- the power -----------------------------------------------------------------------------

    def cut(self) -> None:
        """Lose power now: everything not synced is lost; the disk ignores later writes."""
        if self.dead:
            return
        self.dead = True
        self.cuts += 1
        for state in self._files.values():
            self._restore(state)

    def power_on(self) -> None:
        """Bring the disk back (after every connection on it was closed)."""
        open_paths = [s.path for s in self._files.values() if s.handles]
        if open_paths:
            raise RuntimeError(f"power_on with files still open: {open_paths}")
        self._files.clear()
        self.dead = False
        self.cut_at_sync = None

    def unsynced_bytes(self) -> int:
        """How many bytes a cut now would roll back (for tests of the VFS itself)."""
        return sum(
            op.length if isinstance(op, _Write) else len(op.tail)
            for s in self._files.values()
            for op in s.undo
        )

    def crash_image(self, source: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
        """Write into the new directory ``dest`` what the directory ``source`` would hold
        after a power cut now, leaving the live files alone (a crash image, as CrashMonkey and
        ALICE take them). Much cheaper than re-running a workload to each cut point."""
        source = os.path.realpath(source)
        os.makedirs(dest)
        for entry in os.scandir(source):
            if entry.is_file():
                shutil.copyfile(entry.path, os.path.join(dest, entry.name))
        for state in self._files.values():
            directory, name = os.path.split(state.path)
            target = os.path.join(dest, name)
            if directory == source and os.path.exists(target):
                self._roll_back(state, target)

    def _restore(self, state: _FileState) -> None:
        if os.path.exists(state.path):
            self._roll_back(state, state.path)
        state.undo.clear()
        state.dropped.clear()

    def _roll_back(self, state: _FileState, target: str) -> None:
        """Undo ``state``'s unsynced operations on ``target`` (the file or a copy of it), then
        put back what the disk holds where a failed sync dropped writes."""
        self._roll_back_pending(state, target)
        if state.dropped:
            fd = os.open(target, os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                for offset, disk in state.dropped:
                    if offset < size:
                        os.pwrite(fd, disk[: size - offset], offset)
            finally:
                os.close(fd)

    def _roll_back_pending(self, state: _FileState, target: str) -> None:
        if not state.undo:
            return
        keep: tuple[int, bytes] | None = None
        last = state.undo[-1]
        if self.torn and isinstance(last, _Write) and last.length > SECTOR:
            sectors = self.rng.randrange(1, (last.length - 1) // SECTOR + 1)
            with open(target, "rb") as f:
                f.seek(last.offset)
                keep = (last.offset, f.read(sectors * SECTOR))
        fd = os.open(target, os.O_RDWR)
        try:
            for op in reversed(state.undo):
                if isinstance(op, _Write):
                    if op.old:
                        os.pwrite(fd, op.old, op.offset)
                    os.ftruncate(fd, op.old_size)
                else:
                    os.ftruncate(fd, op.old_size)
                    if op.tail:
                        os.pwrite(fd, op.tail, op.new_size)
            if keep is not None:
                os.pwrite(fd, keep[1], keep[0])
        finally:
            os.close(fd)

    # -- bookkeeping called by the files ---------------------------------------------------------

    def _sync_point(self, state: _FileState) -> bool:
        """Count a sync; False when the power is (or just went) off."""
        if self.dead:
            return False
        self.syncs += 1
        if self.on_sync is not None:
            self.on_sync()  # it may cut the power (of this disk and others)
        if self.cut_at_sync is not None and self.syncs >= self.cut_at_sync:
            self.cut()
        if self.dead:
            return False
        if self.sync_fails is not None and self.sync_fails(state.path):
            self.sync_errors += 1
            if self.drops:
                self._drop(state)
            error = apsw.IOError(f"injected fsync error at sync point {self.syncs}")
            error.extendedresult = apsw.SQLITE_IOERR_FSYNC
            raise error
        self._synced(state)
        return True

    def _synced(self, state: _FileState) -> None:
        """A sync succeeded: the pending writes are durable, over what a failed one dropped."""
        if state.dropped:
            for op in state.undo:
                if isinstance(op, _Write):
                    _carve(state.dropped, op.offset, op.offset + op.length)
                else:
                    _carve(state.dropped, op.new_size, 1 << 62)
        state.undo.clear()

    def _drop(self, state: _FileState) -> None:
        """A failed sync in the fsyncgate model: what the disk holds under each write since the
        last sync (the file as the undo log rebuilds it; zeros past its end) is what a cut
        brings back there, whatever later syncs do, unless a later synced write covers it."""
        if not state.undo:
            return
        with open(state.path, "rb") as f:
            image = bytearray(f.read())
        for op in reversed(state.undo):
            if isinstance(op, _Write):
                image[op.offset : op.offset + len(op.old)] = op.old
                del image[op.old_size :]
            else:
                del image[op.old_size :]
                image[op.new_size : op.new_size] = op.tail
        for op in state.undo:
            if not isinstance(op, _Write):
                continue
            start, end = op.offset, op.offset + op.length
            disk = bytes(image[start:end]).ljust(end - start, b"\0")
            for lo, hi in _uncovered(state.dropped, start, end):  # (earlier drops stand)
                state.dropped.append((lo, disk[lo - start : hi - start]))
                self.dropped_bytes += hi - lo
        state.undo.clear()

    def _state(self, path: str) -> _FileState:
        state = self._files.get(path)
        if state is None:
            state = self._files[path] = _FileState(path)
        return state

    # -- the VFS -------------------------------------------------------------------------------

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        if path is None or flags[0] & apsw.SQLITE_OPEN_DELETEONCLOSE:
            return apsw.VFSFile("", name, flags)
        if self.dead and flags[0] & apsw.SQLITE_OPEN_CREATE and not os.path.exists(path):
            raise apsw.IOError("power is off")
        state = self._state(path)
        if not os.path.exists(path):
            # A new file (perhaps under the name of one deleted behind our back): nothing of
            # an earlier file there is left to roll back. Until synced, it rolls back to empty.
            state.undo.clear()
            state.dropped.clear()
        return _PowerLossFile(self, state, name, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        if self.dead:
            self.ignored += 1
            return
        super().xDelete(filename, syncdir)
        state = self._files.get(filename)
        if state is not None:
            state.undo.clear()
            state.dropped.clear()


def _carve(dropped: list[tuple[int, bytes]], lo: int, hi: int) -> None:
    """Take [lo, hi) out of the dropped ranges (a synced write now holds it)."""
    kept: list[tuple[int, bytes]] = []
    for offset, disk in dropped:
        end = offset + len(disk)
        if end <= lo or offset >= hi:
            kept.append((offset, disk))
            continue
        if offset < lo:
            kept.append((offset, disk[: lo - offset]))
        if end > hi:
            kept.append((hi, disk[hi - offset :]))
    dropped[:] = kept


def _uncovered(dropped: list[tuple[int, bytes]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of [lo, hi) no dropped range covers yet."""
    parts = [(lo, hi)]
    for offset, disk in dropped:
        end = offset + len(disk)
        parts = [
            piece
            for a, b in parts
            for piece in ((a, min(b, offset)), (max(a, end), b))
            if piece[0] < piece[1]
        ]
    return parts


class _PowerLossFile(apsw.VFSFile):
    def __init__(self, vfs: PowerLossVFS, state: _FileState, name: Any, flags: list[int]):
        super().__init__("", name, flags)
        self._vfs = vfs
        self._state = state
        # Our own descriptor, to read what a write is about to replace.
        self._fd = os.open(state.path, os.O_RDONLY)
        state.handles += 1

    def xWrite(self, data: bytes, offset: int) -> None:
        if self._vfs.dead:
            self._vfs.ignored += 1
            return
        size = os.fstat(self._fd).st_size
        old = os.pread(self._fd, min(len(data), size - offset), offset) if offset < size else b""
        self._state.undo.append(_Write(offset, old, size, len(data)))
        super().xWrite(data, offset)

    def xTruncate(self, newsize: int) -> None:
        if self._vfs.dead:
            self._vfs.ignored += 1
            return
        size = os.fstat(self._fd).st_size
        tail = os.pread(self._fd, size - newsize, newsize) if newsize < size else b""
        self._state.undo.append(_Truncate(size, newsize, tail))
        super().xTruncate(newsize)

    def xSync(self, flags: int) -> None:
        if self._vfs.dead:
            # What the process does after the cut never reaches the disk; pretending it
            # succeeds lets it close its connections (whose checkpoint does nothing either).
            self._vfs.ignored += 1
            return
        if not self._vfs._sync_point(self._state):
            raise PowerCut(f"power cut at sync point {self._vfs.syncs}")
        if self._vfs.real_sync:
            super().xSync(flags)

    def xClose(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._state.handles -= 1
        super().xClose()


def disk_image(root: str | os.PathLike[str]) -> dict[str, tuple[int, int]]:
    """What the files under ``root`` hold: the size and CRC-32 of each (CRC-32, not a
    cryptographic digest: a few times cheaper, and nothing here is adversarial), by its path
    under ``root``,
    ``-shm`` files left out (mapped, not written through the VFS, rebuilt by the next open:
    the module docstring). Taken at a cut and again before the power comes back, two images
    show whether anything the dying process did after the cut reached its disk
    (:func:`changed_since`)."""
    image = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and not path.name.endswith("-shm"):
            data = path.read_bytes()
            image[str(path.relative_to(root))] = (len(data), zlib.crc32(data))
    return image


def changed_since(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> list[str]:
    """The files that differ between two :func:`disk_image`s (made, deleted or changed)."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def close_after_cut(store: Any) -> None:
    """Close ``store`` (a ``Store`` over a :class:`PowerLossVFS` whose power was cut) as the
    runtime closes a failed store, ``Store.abandon`` (what ``_storage._worker.close_storage``
    runs once a write failed): the connection closed with no checkpoint and nothing written,
    synced or deleted, the WAL and its ``-shm`` left as the cut left them. That is what a
    process that died with its machine leaves; the restart finds the files as SQLite does
    after a real power loss, and reports nothing, since nothing failed that a broker would
    report (the power went). Then the folder's lock is released, as the process's death
    releases it: ``abandon`` keeps it until a failure's mark is on disk, and a cut writes none.

    ``Store.close`` instead ran its closing checkpoint into the dead disk (its writes and
    syncs ignored, so no check changes) and then unmapped and deleted the ``-shm`` for real;
    and a close that met an error taken for lost writes would mark the folder
    ``STORAGE-FAILED`` and log ``storage.failed`` CRITICAL, a failure no broker had."""
    store.abandon()
    store._lock.release()  # (the dead process's lock; releasing twice does nothing)


class _SynchronousOff:
    """An apsw connection that runs ``PRAGMA synchronous = NORMAL`` as ``OFF``."""

    def __init__(self, db: apsw.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.replace(" ", "").upper() == "PRAGMASYNCHRONOUS=NORMAL":
            sql = "PRAGMA synchronous = OFF"
        return self._db.execute(sql, *args)

    def __enter__(self) -> Any:
        return self._db.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._db.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def synchronous_off_mutant(store: Any) -> None:
    """Make ``store`` commit its apply-only transactions at ``synchronous = OFF`` (the bug of
    issue 16), to show that the power-loss tests catch it."""
    store._db = _SynchronousOff(store._db)


__all__ = [
    "PowerCut",
    "PowerLossVFS",
    "changed_since",
    "close_after_cut",
    "disk_image",
    "synchronous_off_mutant",
]
