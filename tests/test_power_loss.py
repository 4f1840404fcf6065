"""Power loss, for real: a broker's storage under a disk that keeps only what was fsynced.

A single-node leader's storage life is driven through :class:`Store` exactly as the driver
drives it (appends persisted durably with ``save(entries=...)``, then applied in apply-only
transactions with ``save(committed=...)``, compactions, snapshot installs, restarts that elect
the broker again and re-apply what its log holds beyond the applied index), over
:class:`PowerLossVFS`. The power is cut at every sync point of a short run (from crash images:
what the disk would hold had the power gone just before that sync) and at seeded random points
of a longer one (live cuts: the error surfaces, closing writes nothing, the broker restarts
in place and carries on). After every cut: the database opens, ``PRAGMA integrity_check`` is
ok, and every acknowledged append is there with its exact value.

An append is acknowledged when the durable save that holds its entry returned and it was
applied: that is when the driver answers the client.

The long random runs need ``TRIO_BROKER_POWERLOSS=1`` (``nox -s powerloss`` sets it).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import shutil
from pathlib import Path

import apsw
import orjson
import pytest

from tests.long_runs import LONG
from trio_broker._core._commands import AppendMessage, CreateQueue, MessageAppended
from trio_broker._core._raft_messages import Config, Entry, HardState, NoOp, SnapshotMeta
from trio_broker._storage._checkpoint import checkpoint_on_commit
from trio_broker._storage._store import Store
from trio_broker.testing._powerloss import (
    SECTOR,
    PowerCut,
    PowerLossVFS,
    close_after_cut,
    synchronous_off_mutant,
)

BROKER = "a"
CONFIG = Config(frozenset({BROKER}))
QUEUE = "q"


def value(n: int) -> bytes:
    """The n-th append's value: ~1 KB of JSON text that names n, unique and checkable."""
    pad = hashlib.sha256(str(n).encode()).hexdigest()
    return orjson.dumps(f"{n}:{pad * 15}")


def number(data: bytes) -> int:
    return int(orjson.loads(data).split(":", 1)[0])


class Leader:
    """A single-node leader's storage, driven as the driver drives it; no consensus core is
    needed: a single voter commits what it persists."""

    def __init__(
        self, path: Path, vfs: str | None, rng: random.Random, disk: PowerLossVFS | None = None
    ) -> None:
        self.path = path
        self.vfs = vfs
        self.disk = disk
        """The disk, when its power may be cut: nothing is acknowledged once it is off (a
        cut during an automatic checkpoint fails the commit that ran it, through our hook:
        ``_storage/_checkpoint.py``; this check holds either way)."""
        self.rng = rng
        self.next_value = 1
        self.acked: list[int] = []
        """Numbers of the acknowledged appends, in order."""
        self.store: Store | None = None
        self.snapshots = 0

    # -- start and restart ---------------------------------------------------------------------

    def start(self, autocheckpoint: int | None = None) -> None:
        """Open the store and recover as a restarted single-node leader does: elect itself
        (a new term, durable), append a no-op, commit and apply everything its log holds
        beyond the applied index."""
        store = self.store = Store(self.path, vfs=self.vfs)
        for stale in self.path.glob("snapshot-*.sqlite3"):  # as the driver does at start
            stale.unlink()
        if autocheckpoint is not None:
            checkpoint_on_commit(store._db, autocheckpoint)
        state = store.raft_state()
        if state.snapshot_config is None:
            store.bootstrap(CONFIG)
        self.terms = {e.index: e.term for e in state.entries}
        self.terms[state.snapshot_index] = state.snapshot_term
        self.snapshot_index = state.snapshot_index
        self.last = state.entries[-1].index if state.entries else state.snapshot_index
        self.term = state.hard_state.term + 1
        self.commit = state.hard_state.commit
        assert state.snapshot_index <= state.applied <= self.last, state
        store.save(hard_state=HardState(self.term, BROKER, self.commit))
        pending = [e for e in state.entries if e.index > state.applied]
        pending.append(self._append([NoOp()])[0])
        if not store.queue_lengths() and not any(
            isinstance(e.payload, CreateQueue) for e in pending
        ):
            pending += self._append([CreateQueue(QUEUE)])
        self._apply(pending)

    def _append(self, payloads: list) -> list[Entry]:
        entries = [Entry(self.term, self.last + 1 + i, p) for i, p in enumerate(payloads)]
        assert self.store is not None
        self.store.save(hard_state=HardState(self.term, BROKER, self.commit), entries=entries)
        self.last = entries[-1].index
        self.terms.update((e.index, e.term) for e in entries)
        return entries

    def _apply(self, entries: list[Entry]) -> list:
        assert self.store is not None
        self.commit = entries[-1].index
        return self.store.save(
            hard_state=HardState(self.term, BROKER, self.commit), committed=entries
        )

    def close(self) -> None:
        if self.store is not None:
            store, self.store = self.store, None
            if self.disk is not None and self.disk.dead:
                close_after_cut(store)  # as the dying process: nothing asked of a dead disk
                return
            with contextlib.suppress(apsw.Error):  # the disk died under it: nothing to say
                store.close()

    # -- the workload --------------------------------------------------------------------------

    def step(self) -> None:
        """One seeded step: mostly a batch of appends, sometimes a compaction or a snapshot
        install."""
        assert self.store is not None
        r = self.rng.random()
        if r < 0.03 and self.last - self.snapshot_index > 8:
            index = self.last - self.rng.randrange(0, 8)
            self.store.compact(SnapshotMeta(index, self.terms[index], CONFIG))
            self.snapshot_index = index
        elif r < 0.05:
            self.snapshots += 1
            path = self.path / f"snapshot-{self.snapshots}.sqlite3"
            applied = self.store.write_snapshot(str(path))
            assert applied == self.last
            meta = SnapshotMeta(applied, self.terms[applied], CONFIG)
            self.store.save(snapshot=(meta, str(path)))
            self.snapshot_index = applied
            path.unlink()
        else:
            numbers = range(self.next_value, self.next_value + self.rng.randrange(1, 7))
            self.next_value = numbers[-1] + 1
            entries = self._append([AppendMessage(QUEUE, value(n), appended_ms=n) for n in numbers])
            results = self._apply(entries)
            if self.disk is not None and self.disk.dead:
                raise PowerCut("the power went during this step: the process is gone")
            assert all(isinstance(r, MessageAppended) for r in results), results
            self.acked.extend(numbers)


def check(path: Path, acked: list[int], vfs: str | None = None) -> Leader:
    """Restart a leader on ``path`` and check that it holds every acknowledged append."""
    leader = Leader(path, vfs, random.Random(0))
    try:
        leader.start()  # an apsw.CorruptError here is a failure as well
        assert leader.store is not None
        ((integrity,),) = leader.store._db.execute("PRAGMA integrity_check").fetchall()
        assert integrity == "ok", integrity
        held = leader.store.messages(QUEUE)
        numbers = [number(d) for d in held]
        assert numbers == sorted(set(numbers)), "appends reordered or duplicated"
        assert all(d == value(n) for n, d in zip(numbers, held, strict=True)), "a value changed"
        lost = sorted(set(acked) - set(numbers))
        assert not lost, f"{len(lost)} acknowledged appends lost, first {lost[:5]}"
        leader.next_value = max([*numbers, *acked, 0]) + 1
        leader.acked = list(acked)
        return leader
    except BaseException:
        leader.close()
        raise


def run_with_images(
    tmp_path: Path, seed: int, steps: int, *, torn: bool, autocheckpoint: int, mutant: bool = False
) -> tuple[int, int]:
    """Run ``steps`` workload steps and check a crash image taken at every sync point.

    Returns (sync points checked, appends acknowledged)."""
    vfs = PowerLossVFS(f"powerloss-images-{seed}-{torn}", torn=torn, rng=random.Random(seed))
    # The images are checked through a VFS too, for its fake fsyncs: real ones are slow here.
    checker = PowerLossVFS(f"powerloss-checker-{seed}-{torn}")
    images: list[tuple[Path, int]] = []
    live = tmp_path / "live"
    leader = Leader(live, vfs.name, random.Random(seed), vfs)

    def image() -> None:
        dest = tmp_path / f"image-{vfs.syncs}"
        vfs.crash_image(live, dest)
        images.append((dest, len(leader.acked)))

    try:
        leader.start(autocheckpoint)
        if mutant:
            synchronous_off_mutant(leader.store)
        vfs.on_sync = image
        for _ in range(steps):
            leader.step()
            while images:
                dest, acked = images.pop()
                try:
                    check(dest, leader.acked[:acked], checker.name).close()
                except BaseException as exc:
                    exc.add_note(f"crash image at sync point {dest.name} (seed {seed})")
                    raise
                shutil.rmtree(dest)
        return vfs.syncs, len(leader.acked)
    finally:
        vfs.on_sync = None
        leader.close()
        vfs.unregister()
        checker.unregister()


@pytest.mark.parametrize("torn", [False, True], ids=["clean", "torn"])
def test_power_cut_at_every_sync_point(ram_path: Path, torn: bool) -> None:
    """Every sync point of a run that checkpoints many times (a small wal_autocheckpoint keeps
    the images small; the long run uses the default), compacts and installs snapshots."""
    # 180 steps: since schema version 6 (values in rowid tables) a step writes fewer pages,
    # so it takes more of them to pass the same number of sync points.
    syncs, acked = run_with_images(ram_path, 1, steps=180, torn=torn, autocheckpoint=40)
    assert syncs > 300 and acked > 300, (syncs, acked)


def test_power_cuts_catch_synchronous_off(ram_path: Path) -> None:
    """The test has teeth: with the apply-only commits at synchronous=OFF (issue 16's bug),
    some sync point leaves acknowledged appends lost or the database malformed."""
    with pytest.raises((AssertionError, apsw.CorruptError)) as failed:
        run_with_images(ram_path, 1, steps=160, torn=False, autocheckpoint=40, mutant=True)
    assert "lost" in str(failed.value) or isinstance(failed.value, apsw.CorruptError)


def run_with_cuts(tmp_path: Path, seed: int, cuts: int, steps: int, *, torn: bool) -> int:
    """Live power cuts at seeded random sync points, ``cuts`` times in one broker's life: the
    broker restarts in place after each and carries on. Returns the appends acknowledged."""
    rng = random.Random(seed)
    vfs = PowerLossVFS(f"powerloss-live-{seed}-{torn}", torn=torn, rng=random.Random(seed))
    path = tmp_path / "broker"
    leader = Leader(path, vfs.name, random.Random(rng.random()), vfs)
    try:
        leader.start()
        for cut in range(cuts):
            vfs.cut_at_sync = vfs.syncs + rng.randrange(1, 2 * steps)
            with pytest.raises(apsw.Error) as raised:
                for _ in range(100 * steps):
                    leader.step()
            assert vfs.dead, f"not a power cut: {raised.value!r}"
            acked = list(leader.acked)
            leader.close()
            vfs.power_on()
            try:
                leader = check(path, acked, vfs.name)
                leader.disk = vfs
            except BaseException as exc:
                exc.add_note(f"after live cut {cut + 1} (seed {seed}, torn {torn})")
                raise
            leader.rng = random.Random(rng.random())
        return len(leader.acked)
    finally:
        leader.close()
        vfs.unregister()


@pytest.mark.parametrize("seed", [1, 2])
def test_live_power_cuts(ram_path: Path, seed: int) -> None:
    """The cut as it happens: the sync fails, closing writes nothing, the broker restarts in
    place, recovers, and is cut again later."""
    assert run_with_cuts(ram_path, seed, cuts=3, steps=150, torn=seed % 2 == 0) > 0


@LONG
@pytest.mark.parametrize("seed", range(1, 9))
def test_power_cuts_long(tmp_path: Path, seed: int) -> None:
    """Thousands of ~1 KB appends at the default wal_autocheckpoint (1,000 pages), crossed
    several times between cuts, and many live cuts at random sync points."""
    assert run_with_cuts(tmp_path, seed, cuts=6, steps=1500, torn=seed % 2 == 0) > 3000


def test_vfs_rolls_back_what_was_not_synced(tmp_path: Path) -> None:
    """The VFS itself: after a cut, a file holds exactly what it held at its last sync."""
    vfs = PowerLossVFS("powerloss-unit")
    try:
        db = apsw.Connection(str(tmp_path / "db"), vfs=vfs.name)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
        synced = vfs.syncs
        db.execute("PRAGMA synchronous = OFF")
        db.execute("INSERT INTO t VALUES (2)")
        assert vfs.syncs == synced and vfs.unsynced_bytes() > 0
        vfs.cut()
        db.execute("PRAGMA synchronous = FULL")
        db.execute("INSERT INTO t VALUES (3)")  # the process may run on; the disk is dead
        db.close()
        vfs.power_on()
        db = apsw.Connection(str(tmp_path / "db"), vfs=vfs.name)
        assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
        db.close()
        vfs.cut_at_sync = vfs.syncs + 1
        db = apsw.Connection(str(tmp_path / "db"), vfs=vfs.name)
        with pytest.raises(PowerCut):
            db.execute("INSERT INTO t VALUES (4)")
        assert vfs.dead
        db.close()
    finally:
        vfs.unregister()


def test_vfs_undo_log_writes_truncates_torn_and_images(tmp_path: Path) -> None:
    """The undo log, byte for byte: writes over old data, writes that extend the file and
    truncations roll back to the synced content; a crash image matches a cut; a torn cut
    keeps a whole-sector prefix of the last write."""
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_MAIN_DB
    for torn in (False, True):
        vfs = PowerLossVFS(f"powerloss-bytes-{torn}", torn=torn, rng=random.Random(3))
        live = tmp_path / f"live-{torn}"
        live.mkdir()
        path = str(live / "f")
        try:
            f = vfs.xOpen(path, [flags, 0])
            f.xWrite(b"a" * 4096, 0)
            f.xSync(apsw.SQLITE_SYNC_NORMAL)
            f.xWrite(b"c" * 1000, 4096)  # extends
            f.xTruncate(2048)  # cuts into synced data
            f.xWrite(b"b" * 4096, 0)  # the last write: over synced data
            assert vfs.unsynced_bytes() == 1000 + 3048 + 4096
            vfs.crash_image(live, tmp_path / f"image-{torn}")
            image = (tmp_path / f"image-{torn}" / "f").read_bytes()
            vfs.cut()
            f.xWrite(b"z" * 10, 0)  # a dead disk
            f.xClose()
            vfs.power_on()
            after = Path(path).read_bytes()
            assert len(after) == 4096
            if not torn:
                assert after == image == b"a" * 4096
            else:
                kept = after.count(b"b")
                assert after == b"b" * kept + b"a" * (4096 - kept)
                assert kept % SECTOR == 0 and 0 < kept < 4096
                assert image.count(b"b") % SECTOR == 0
        finally:
            vfs.unregister()
