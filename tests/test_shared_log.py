"""The broker's shared log (``_storage/_shared_log.py``): one fsync per loop turn for every
group with something to persist, and nothing acknowledged lost when the power goes.

Several single-node groups' stores are driven as their drivers drive them (durable saves of
new entries, then apply-only saves; compactions and snapshot installs of one group at a
time), every group's saves of a turn in one :class:`TurnCommitter` job, over
:class:`PowerLossVFS` (only what was fsynced survives a cut). After a cut, every group reopens
from its file and the shared log and must hold every append acknowledged to it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import orjson
import pytest
import trio

from tests.long_runs import LONG
from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft_messages import Config, Entry, HardState, NoOp, SnapshotMeta
from trio_broker._storage._checkpoint import checkpoint_on_commit
from trio_broker._storage._shared_log import (
    SHARED_LOG_FILE,
    SharedLog,
    TurnCommitter,
    _Job,
)
from trio_broker._storage._store import Store
from trio_broker._storage._worker import StorageWorker
from trio_broker.testing._powerloss import PowerCut, PowerLossVFS

BROKER = "a"
CONFIG = Config(frozenset({BROKER}))
QUEUE = "q"


def value(n: int) -> bytes:
    pad = hashlib.sha256(str(n).encode()).hexdigest()
    return orjson.dumps(f"{n}:{pad * 4}")


def number(data: bytes) -> int:
    return int(orjson.loads(data).split(":", 1)[0])


class Group:
    """One single-node group's storage life (a single voter commits what it persists)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        state = store.raft_state()
        if state.snapshot_config is None:
            store.bootstrap(CONFIG)
        self.terms = {e.index: e.term for e in state.entries}
        self.terms[state.snapshot_index] = state.snapshot_term
        self.last = state.entries[-1].index if state.entries else state.snapshot_index
        self.term = state.hard_state.term + 1
        self.commit = state.hard_state.commit
        assert state.snapshot_index <= state.applied <= self.last, state
        self.pending = [e for e in state.entries if e.index > state.applied]
        self.new: list[Entry] = []

    def propose(self, payloads: list[Any]) -> Any:
        """This turn's durable save: new entries at the current term."""
        self.new = [Entry(self.term, self.last + 1 + i, p) for i, p in enumerate(payloads)]
        self.last = self.new[-1].index
        self.terms.update((e.index, e.term) for e in self.new)
        return functools.partial(
            self.store.save, hard_state=HardState(self.term, BROKER, self.commit), entries=self.new
        )

    def apply(self) -> Any:
        """The next turn's apply-only save of what was persisted (and anything left)."""
        entries, self.pending, self.new = [*self.pending, *self.new], [], []
        self.commit = entries[-1].index
        return functools.partial(
            self.store.save, hard_state=HardState(self.term, BROKER, self.commit), committed=entries
        )


class Broker:
    """A broker hosting ``count`` groups with one shared log, on ``root``."""

    def __init__(self, root: Path, count: int, vfs: PowerLossVFS, rng: random.Random) -> None:
        self.root, self.count, self.vfs, self.rng = root, count, vfs, rng
        self.acked: list[list[int]] = [[] for _ in range(count)]
        self.next_value = 1
        self.snapshots = 0
        self.log: SharedLog | None = None
        self.groups: list[Group] = []

    def start(self) -> None:
        """Open, and recover as restarted single-node leaders do: a new term each (durable),
        a no-op, then apply everything beyond the applied index; every group in one turn."""
        self.log = SharedLog(self.root / SHARED_LOG_FILE, vfs=self.vfs.name)
        self.committer = TurnCommitter(None, self.log)  # type: ignore[arg-type]
        for stale in self.root.glob("*/snapshot-*.sqlite3"):
            stale.unlink()
        self.groups = [
            Group(Store(self.root / f"G{i}", vfs=self.vfs.name, shared=self.log))
            for i in range(self.count)
        ]
        saves = []
        for g in self.groups:
            payloads: list[Any] = [NoOp()]
            if not g.store.queue_lengths() and not any(
                isinstance(e.payload, CreateQueue) for e in g.pending
            ):
                payloads.append(CreateQueue(QUEUE))
            saves.append(g.propose(payloads))
        self.turn(saves)
        self.turn([g.apply() for g in self.groups])

    def turn(self, saves: list[Any]) -> list[Any]:
        """Every group's save of one loop turn in one job, as :class:`TurnCommitter` runs it."""
        assert self.log is not None
        outcomes = self.committer._commit([_Job(s, False, None, 1) for s in saves])
        return [o.unwrap() for o in outcomes]

    def step(self) -> None:
        """Mostly every group appends a few values (one durable turn, then one apply turn);
        sometimes one group compacts or installs a snapshot of itself."""
        r = self.rng.random()
        g = self.rng.choice(self.groups)
        if r < 0.04 and g.last - min(g.terms) > 6:
            index = g.last - self.rng.randrange(0, 4)
            if index <= g.commit:
                g.store.compact(SnapshotMeta(index, g.terms[index], CONFIG))
        elif r < 0.07 and not g.pending and not g.new:
            self.snapshots += 1
            path = g.store.data_dir / f"snapshot-{self.snapshots}.sqlite3"
            applied = g.store.write_snapshot(str(path))
            meta = SnapshotMeta(applied, g.terms[applied], CONFIG)
            # Installed in the same turn as the other groups' appends: they are not disturbed.
            others = [h for h in self.groups if h is not g]
            numbers = self._appends(others)
            self.turn(
                [
                    functools.partial(g.store.save, snapshot=(meta, str(path))),
                    *(h.propose([self._append(n) for n in ns]) for h, ns in numbers),
                ]
            )
            path.unlink()
            self._applied(numbers)
        else:
            numbers = self._appends(self.groups)
            self.turn([h.propose([self._append(n) for n in ns]) for h, ns in numbers])
            self._applied(numbers)

    def _appends(self, groups: list[Group]) -> list[tuple[Group, range]]:
        out = []
        for g in groups:
            ns = range(self.next_value, self.next_value + self.rng.randrange(1, 4))
            self.next_value = ns[-1] + 1
            out.append((g, ns))
        return out

    @staticmethod
    def _append(n: int) -> AppendMessage:
        return AppendMessage(QUEUE, value(n), appended_ms=n)

    def _applied(self, numbers: list[tuple[Group, range]]) -> None:
        self.turn([g.apply() for g, _ in numbers])
        if self.vfs.dead:
            raise PowerCut("the power went during this turn")
        for g, ns in numbers:
            self.acked[self.groups.index(g)].extend(ns)

    def close(self) -> None:
        for g in self.groups:
            with contextlib.suppress(apsw.Error):
                g.store.close()
        self.groups = []
        if self.log is not None:
            with contextlib.suppress(apsw.Error):
                self.log.close()
            self.log = None

    def check(self, acked: list[list[int]]) -> None:
        """Every acknowledged append of every group is there, exactly, in order."""
        for i, g in enumerate(self.groups):
            ((integrity,),) = g.store._db.execute("PRAGMA integrity_check").fetchall()
            assert integrity == "ok", integrity
            held = g.store.messages(QUEUE)
            numbers = [number(d) for d in held]
            assert numbers == sorted(set(numbers)), "appends reordered or duplicated"
            assert all(d == value(n) for n, d in zip(numbers, held, strict=True))
            lost = sorted(set(acked[i]) - set(numbers))
            assert not lost, f"group {i}: {len(lost)} acknowledged appends lost, first {lost[:5]}"


def _images(vfs: PowerLossVFS, live: Path, dest: Path) -> None:
    """A crash image of the whole broker folder: the shared log and every group's folder."""
    vfs.crash_image(live, dest)
    for sub in sorted(live.iterdir()):
        if sub.is_dir():
            shutil.rmtree(dest / sub.name, ignore_errors=True)
            vfs.crash_image(sub, dest / sub.name)


def check_images(
    images: list[tuple[Path, list[list[int]]]], checker: PowerLossVFS, where: str = ""
) -> int:
    """Restart a broker on every crash image taken so far (each popped and deleted once
    checked) and check it holds the appends acknowledged when its image was taken; returns
    how many were checked. ``where`` begins the note a failure carries."""
    checked = 0
    while images:
        dest, acked = images.pop()
        again = Broker(dest, 3, checker, random.Random(0))
        try:
            again.start()
            again.check(acked)
        except BaseException as exc:
            exc.add_note(f"{where}crash image at sync point {dest.name}")
            raise
        finally:
            again.close()
        shutil.rmtree(dest)
        checked += 1
    return checked


@contextlib.contextmanager
def vfs_broker(
    tmp_path: Path, name: str, *, vfs_seed: int = 0, broker_seed: int = 1, torn: bool = False
) -> Iterator[tuple[Broker, PowerLossVFS, PowerLossVFS]]:
    """Three groups on one shared log in ``tmp_path / "live"`` over a :class:`PowerLossVFS`
    (its random choices from ``vfs_seed``, the broker's from ``broker_seed``; ``torn``: writes
    in progress torn at a cut), started; yields the broker, its VFS and a second VFS to
    restart crash images on (:func:`check_images`). Closed and unregistered at the end."""
    vfs = PowerLossVFS(name, torn=torn, rng=random.Random(vfs_seed))
    checker = PowerLossVFS(f"{name}-checker")
    live = tmp_path / "live"
    live.mkdir()
    broker = Broker(live, 3, vfs, random.Random(broker_seed))
    try:
        broker.start()
        yield broker, vfs, checker
    finally:
        vfs.on_sync = None
        broker.close()
        vfs.unregister()
        checker.unregister()


@contextlib.contextmanager
def imaged_broker(
    tmp_path: Path,
    name: str,
    *,
    vfs_seed: int,
    broker_seed: int,
    torn: bool = False,
    where: str = "",
) -> Iterator[tuple[Broker, Callable[[], int]]]:
    """:func:`vfs_broker` with a crash image taken at every sync point from its start; yields
    the broker and a call that checks every image taken so far (:func:`check_images`, its
    failures' notes beginning with ``where``: how many)."""
    with vfs_broker(tmp_path, name, vfs_seed=vfs_seed, broker_seed=broker_seed, torn=torn) as (
        broker,
        vfs,
        checker,
    ):
        images: list[tuple[Path, list[list[int]]]] = []

        def image() -> None:
            dest = tmp_path / f"image-{vfs.syncs}"
            _images(vfs, broker.root, dest)
            images.append((dest, [list(a) for a in broker.acked]))

        vfs.on_sync = image
        yield broker, functools.partial(check_images, images, checker, where)


def run_with_images(tmp_path: Path, torn: bool, steps: int) -> int:
    """Three groups, one shared log, ``steps`` steps, a crash image checked at every sync
    point; returns how many."""
    with imaged_broker(tmp_path, f"shared-images-{torn}", vfs_seed=3, broker_seed=7, torn=torn) as (
        broker,
        check,
    ):
        for g in broker.groups:
            checkpoint_on_commit(g.store._db, 20)
        checked = 0
        for _ in range(steps):
            broker.step()
            checked += check()
        assert broker.snapshots > 0
    return checked


def test_power_cut_at_every_sync_point_with_several_groups(tmp_path: Path) -> None:
    """A crash image at every sync point (the shared log's commits, the groups' checkpoints,
    compactions, installs) restarts with every acknowledged append of every group."""
    assert run_with_images(tmp_path, True, steps=6) > 10


@LONG
@pytest.mark.parametrize("torn", [False, True], ids=["clean", "torn"])
def test_power_cut_at_every_sync_point_with_several_groups_long(tmp_path: Path, torn: bool) -> None:
    assert run_with_images(tmp_path, torn, steps=60) > 150


def run_with_cuts(tmp_path: Path, seed: int, cuts: int) -> int:
    """Live power cuts at seeded sync points; returns the appends acknowledged."""
    rng = random.Random(seed)
    vfs = PowerLossVFS(f"shared-live-{seed}", torn=seed % 2 == 0, rng=random.Random(seed))
    broker = Broker(tmp_path, 4, vfs, random.Random(seed))
    try:
        broker.start()
        for cut in range(cuts):
            vfs.cut_at_sync = vfs.syncs + rng.randrange(1, 60)
            with pytest.raises(apsw.Error):
                for _ in range(2000):
                    broker.step()
            assert vfs.dead
            acked = [list(a) for a in broker.acked]
            broker.close()
            vfs.power_on()
            broker.start()
            try:
                broker.check(acked)
            except BaseException as exc:
                exc.add_note(f"after live cut {cut + 1} (seed {seed})")
                raise
            broker.acked = acked
        return sum(len(a) for a in broker.acked)
    finally:
        broker.close()
        vfs.unregister()


@pytest.mark.parametrize("seed", [1, 2])
def test_live_power_cuts_with_several_groups(tmp_path: Path, seed: int) -> None:
    """The cut as it happens, at seeded sync points: the broker's groups restart in place from
    their files and the shared log, hold every acknowledged append, and carry on."""
    assert run_with_cuts(tmp_path, seed, cuts=3) > 0


def test_power_cuts_catch_a_shared_log_that_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests have teeth: with the shared log's rows never written (the groups' files
    still committing at NORMAL), some cut loses acknowledged appends."""
    monkeypatch.setattr(SharedLog, "write", lambda *args: 0)
    with pytest.raises(AssertionError, match="acknowledged appends lost"):
        for seed in range(1, 9):
            (tmp_path / str(seed)).mkdir()
            run_with_cuts(tmp_path / str(seed), seed, cuts=3)


def test_one_turn_of_many_busy_groups_costs_one_fsync(tmp_path: Path) -> None:
    """Eight groups each persisting new entries in the same turn: one fsync in all (the shared
    log's commit), and none for the apply turn that follows. Without the shared log, the same
    turn costs one fsync per group."""
    vfs = PowerLossVFS("shared-count")
    broker = Broker(tmp_path, 8, vfs, random.Random(1))
    try:
        broker.start()
        for _ in range(3):
            broker.turn([g.propose([NoOp()]) for g in broker.groups])
            broker.turn([g.apply() for g in broker.groups])
        before = vfs.syncs
        broker.turn([g.propose([Broker._append(n)]) for n, g in enumerate(broker.groups)])
        assert vfs.syncs - before == 1
        before = vfs.syncs
        broker.turn([g.apply() for g in broker.groups])
        assert vfs.syncs - before == 0
        assert all(g.store.messages(QUEUE) for g in broker.groups)
        # The same stores, each saving alone as before the shared log: one fsync per group.
        alone = [functools.partial(g.propose([NoOp()]), stage=None) for g in broker.groups]
        for g in broker.groups:
            g.store._shared = None
        before = vfs.syncs
        for save in alone:
            save()
        assert vfs.syncs - before == 8
    finally:
        broker.close()
        vfs.unregister()


def test_the_saves_of_one_loop_turn_are_one_job(tmp_path: Path) -> None:
    """Eight groups' drivers woken in the same turn hand their saves to the committer: they run
    as one job on the shared storage thread, one fsync; each gets its own results."""
    vfs = PowerLossVFS("shared-turn")
    broker = Broker(tmp_path, 8, vfs, random.Random(1))
    try:
        broker.start()
        results: dict[int, Any] = {}

        async def main() -> None:
            worker = StorageWorker()
            committer = TurnCommitter(worker, broker.log)  # type: ignore[arg-type]
            try:

                async def one(i: int, save: Any) -> None:
                    results[i] = await committer.save(save)

                saves = [g.propose([Broker._append(100 + i)]) for i, g in enumerate(broker.groups)]
                before = vfs.syncs
                async with trio.open_nursery() as nursery:
                    for i, save in enumerate(saves):
                        nursery.start_soon(one, i, save)
                assert (committer.batches, committer.saves) == (1, 8)
                assert vfs.syncs - before == 1
                applies = [g.apply() for g in broker.groups]
                async with trio.open_nursery() as nursery:
                    for i, save in enumerate(applies):
                        nursery.start_soon(one, i, save)
                assert committer.batches == 2
            finally:
                worker.stop()
                await worker.wait_stopped()

        trio.run(main)
        for i, g in enumerate(broker.groups):
            assert [number(m) for m in g.store.messages(QUEUE)][-1] == 100 + i
            assert len(results[i]) == 1  # this group's one applied entry's result
    finally:
        broker.close()
        vfs.unregister()


def test_a_closed_group_removes_only_its_rows(tmp_path: Path) -> None:
    """A group whose replica stops (retired from this broker, or a clean stop) syncs its file
    and deletes its own rows from the shared log; the other groups' rows stay, and they
    still recover from them after a power cut."""
    vfs = PowerLossVFS("shared-retire")
    broker = Broker(tmp_path, 3, vfs, random.Random(2))
    try:
        broker.start()
        for _ in range(5):
            broker.step()
        assert broker.log is not None
        rows = broker.log.group_rows()
        assert len(rows) == 3
        retired = broker.groups.pop(0)
        gone = retired.store._incarnation
        retired.store.close()
        after = broker.log.group_rows()
        assert gone not in after and after == {k: v for k, v in rows.items() if k != gone}
        acked = [list(a) for a in broker.acked[1:]]
        vfs.cut()
        broker.close()
        vfs.power_on()
        shutil.rmtree(tmp_path / "G0")  # (its data moved aside: placed here again, it is new)
        broker.start()
        assert broker.groups[0].store.messages(QUEUE) == []
        broker.acked = [[], *acked]
        broker.check(broker.acked)
    finally:
        broker.close()
        vfs.unregister()


def test_a_new_file_never_replays_rows_of_an_earlier_one(tmp_path: Path) -> None:
    """A group's folder replaced while its rows were still in the shared log (a crash, then the
    replica's data moved aside): the new file gets a new incarnation and none of those rows."""
    vfs = PowerLossVFS("shared-incarnation")
    broker = Broker(tmp_path, 2, vfs, random.Random(4))
    try:
        broker.start()
        for _ in range(4):
            broker.step()
        old = broker.groups[0].store._incarnation
        assert broker.log is not None and broker.log.group_rows()[old] > 0
        vfs.cut()
        broker.close()
        vfs.power_on()
        shutil.rmtree(tmp_path / "G0")
        log = SharedLog(tmp_path / SHARED_LOG_FILE, vfs=vfs.name)
        store = Store(tmp_path / "G0", vfs=vfs.name, shared=log)
        try:
            assert store._incarnation != old
            assert store.raft_state().entries == []
        finally:
            store.close()
            log.close()
    finally:
        broker.close()
        vfs.unregister()


def test_a_group_file_opened_alone_takes_back_its_rows(tmp_path: Path) -> None:
    """A group's file opened without the shared log (``python -m trio_broker data`` on a
    stopped broker) first replays what a power cut took from it, then stands alone."""
    vfs = PowerLossVFS("shared-alone")
    broker = Broker(tmp_path, 2, vfs, random.Random(5))
    try:
        broker.start()
        for _ in range(6):
            broker.step()
        acked = [list(a) for a in broker.acked]
        vfs.cut()
        broker.close()
        vfs.power_on()
        store = Store(tmp_path / "G1", vfs=vfs.name)
        try:
            held = {number(d) for d in store.messages(QUEUE)}
            state = store.raft_state()
            pending = [e for e in state.entries if e.index > state.applied]
            if pending:
                store.save(committed=pending)
            held = {number(d) for d in store.messages(QUEUE)}
            assert set(acked[1]) <= held
            assert store.get_meta("shared_incarnation") is None
        finally:
            store.close()
    finally:
        broker.close()
        vfs.unregister()


def test_a_data_directory_of_the_earlier_layout_opens_with_the_shared_log(tmp_path: Path) -> None:
    """A group folder written before the shared log existed opens with one unchanged: its log
    and queues are read as they are, and its next saves go through the shared log."""
    old = Store(tmp_path / "G0")
    old.bootstrap(CONFIG)
    entries = [
        Entry(1, 1, CreateQueue(QUEUE)),
        Entry(1, 2, AppendMessage(QUEUE, value(1), appended_ms=1)),
    ]
    old.save(hard_state=HardState(1, BROKER, 0), entries=entries)
    old.save(hard_state=HardState(1, BROKER, 2), committed=entries)
    old.close()
    log = SharedLog(tmp_path / SHARED_LOG_FILE)
    store = Store(tmp_path / "G0", shared=log)
    try:
        assert [e.index for e in store.raft_state().entries] == [1, 2]
        assert [number(d) for d in store.messages(QUEUE)] == [1]
        save = functools.partial(
            store.save, hard_state=HardState(2, BROKER, 2), entries=[Entry(2, 3, NoOp())]
        )
        with log.transaction:  # (a batch's: a save alone in its fsync writes no row)
            save(stage="journal")
        save(stage="apply")
        assert list(log.group_rows().values()) == [1]
    finally:
        store.close()
        log.close()


def test_a_snapshot_install_of_one_group_leaves_the_others(tmp_path: Path) -> None:
    """One group installs a snapshot in the same turn as the others append: their rows and
    entries are untouched, and after a power cut each group holds what it acknowledged (the
    installing group its snapshot's state)."""
    vfs = PowerLossVFS("shared-install")
    broker = Broker(tmp_path, 3, vfs, random.Random(6))
    try:
        broker.start()
        for _ in range(4):
            numbers = broker._appends(broker.groups)
            broker.turn([g.propose([broker._append(n) for n in ns]) for g, ns in numbers])
            broker._applied(numbers)
        assert broker.log is not None
        first, *others = broker.groups
        rows = broker.log.group_rows()
        path = first.store.data_dir / "snapshot-1.sqlite3"
        applied = first.store.write_snapshot(str(path))
        meta = SnapshotMeta(applied, first.terms[applied], CONFIG)
        numbers = broker._appends(others)
        broker.turn(
            [
                functools.partial(first.store.save, snapshot=(meta, str(path))),
                *(g.propose([broker._append(n) for n in ns]) for g, ns in numbers),
            ]
        )
        after = broker.log.group_rows()
        for g in others:
            assert after[g.store._incarnation] == rows[g.store._incarnation] + 1
        assert first.store.raft_state().snapshot_index == applied
        broker._applied(numbers)
        acked = [list(a) for a in broker.acked]
        vfs.cut()
        broker.close()
        vfs.power_on()
        broker.start()
        broker.check(acked)
        assert broker.groups[0].store.raft_state().snapshot_index == applied
    finally:
        broker.close()
        vfs.unregister()


def test_the_shared_log_is_trimmed_once_the_groups_files_hold_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared log's rows stay bounded: past TRIM_ROWS, every group holding rows has its
    file synced and those rows are deleted; a power cut after trims loses nothing."""
    monkeypatch.setattr("trio_broker._storage._shared_log.TRIM_ROWS", 12)
    vfs = PowerLossVFS("shared-trim")
    broker = Broker(tmp_path, 3, vfs, random.Random(8))
    try:
        broker.start()
        assert broker.log is not None
        most = 0
        for _ in range(40):
            broker.step()
            rows = sum(broker.log.group_rows().values())
            assert rows == broker.log.rows
            most = max(most, rows)
        assert most <= 12 + 3  # (one turn's rows beyond the bound, at most)
        assert sum(len(a) for a in broker.acked) > 100
        acked = [list(a) for a in broker.acked]
        vfs.cut()
        broker.close()
        vfs.power_on()
        broker.start()
        broker.check(acked)
    finally:
        broker.close()
        vfs.unregister()


def test_a_trim_never_runs_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save alone in its turn and judged short runs in place, on the event loop (alone in
    its fsync: no row); the trims that the turns of several groups make due (one FULL commit
    per group holding rows) run on the storage thread, never there, and the rows stay
    bounded."""
    import threading

    monkeypatch.setattr("trio_broker._storage._shared_log.TRIM_ROWS", 12)
    vfs = PowerLossVFS("shared-trim-thread")
    broker = Broker(tmp_path, 4, vfs, random.Random(10))
    where: list[str] = []
    trim = SharedLog.trim

    def trim_noting_thread(self: SharedLog) -> None:
        where.append(threading.current_thread().name)
        trim(self)

    monkeypatch.setattr(SharedLog, "trim", trim_noting_thread)

    async def main() -> tuple[str, int, int]:
        assert broker.log is not None
        worker = StorageWorker(name="shared-storage-thread")
        committer = TurnCommitter(worker, broker.log)
        most = 0
        try:
            for n in range(30):
                async with trio.open_nursery() as nursery:  # every group in one turn: rows
                    for g in broker.groups:
                        save = g.propose([Broker._append(1000 + n)])
                        nursery.start_soon(functools.partial(committer.save, save, short=True))
                most = max(most, broker.log.rows)
                for g in broker.groups:  # each group alone in its turn, judged short
                    await committer.save(g.apply(), short=True)
                    most = max(most, broker.log.rows)
        finally:
            worker.stop()
            await worker.wait_stopped()
        return threading.current_thread().name, worker.ran_here, most

    try:
        broker.start()
        where.clear()  # (the harness's own turns, not a committer's)
        loop_thread, ran_here, most = trio.run(main)
        assert ran_here > 100  # the saves did run in place
        assert len(where) >= 3, where  # about 120 rows / 12
        assert loop_thread not in where, where
        assert set(where) == {"shared-storage-thread"}, where
        assert most <= 2 * 12 + 4 + 4, most  # (a trim follows its turn, one at a time)
    finally:
        broker.close()
        vfs.unregister()


class _NoLog:
    """A shared log that stores nothing (the committer's batching alone is under test)."""

    def __init__(self) -> None:
        self.transaction = contextlib.nullcontext()

    def maybe_trim(self) -> None:
        pass


def test_a_turn_is_cut_into_bounded_jobs_first_come_first_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More saves in one turn than a job holds: they run in jobs of at most MAX_BATCH_JOBS
    saves, in the order they came; a save heavier than MAX_BATCH_ENTRIES runs alone, never
    split, and the saves behind it are not held back by it beyond its own job."""
    monkeypatch.setattr("trio_broker._storage._shared_log.MAX_BATCH_JOBS", 4)
    monkeypatch.setattr("trio_broker._storage._shared_log.MAX_BATCH_ENTRIES", 10)
    jobs: list[list[int]] = []
    ran: list[int] = []
    applied = [True]  # (an apply stage ran since the last journal stage: a new job starts)

    def make(i: int, entries: int) -> Any:
        def save(*, stage: str, entries: tuple[()] = ()) -> list[int]:
            if stage == "own":  # (a job of one save: no journal stage)
                jobs.append([i])
                ran.append(i)
                return [i]
            if stage == "journal":
                if applied[0]:
                    jobs.append([])
                    applied[0] = False
                jobs[-1].append(i)
                return []
            applied[0] = True
            ran.append(i)
            return [i]

        return functools.partial(save, entries=tuple(range(entries)))

    async def main() -> dict[int, Any]:
        worker = StorageWorker()
        committer = TurnCommitter(worker, _NoLog())  # type: ignore[arg-type]
        got: dict[int, Any] = {}

        async def one(i: int, entries: int) -> None:
            got[i] = await committer.save(make(i, entries))

        try:
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i, 20 if i == 2 else 1)
                    await trio.lowlevel.cancel_shielded_checkpoint()  # (arrival order)
        finally:
            worker.stop()
            await worker.wait_stopped()
        return got

    got = trio.run(main)
    assert got == {i: [i] for i in range(10)}
    assert ran == sorted(ran)  # first come, first served
    assert all(len(job) <= 4 for job in jobs)
    assert [2] in jobs  # the heavy save alone
    assert [i for job in jobs for i in job] == list(range(10))


class _FullLog(_NoLog):
    """A shared log whose commit fails for lack of space (the outermost transaction)."""

    def __init__(self) -> None:
        self.depth = 0
        self.transaction = self  # type: ignore[assignment]

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0 and exc[0] is None:
            raise apsw.FullError("database or disk is full")


def test_a_failed_shared_commit_fails_every_save_of_its_job_and_applies_none() -> None:
    """When the shared log's commit fails (the disk is full), every save of the job gets the
    error (each driver retries its own), and no group's own transaction ran."""
    applied: list[int] = []

    def make(i: int) -> Any:
        def save(*, stage: str) -> list[int]:
            if stage == "apply":
                applied.append(i)
            return []

        return save

    async def main() -> dict[int, BaseException]:
        worker = StorageWorker()
        committer = TurnCommitter(worker, _FullLog())  # type: ignore[arg-type]
        errors: dict[int, BaseException] = {}

        async def one(i: int) -> None:
            try:
                await committer.save(make(i))
            except apsw.FullError as exc:
                errors[i] = exc

        try:
            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(one, i)
        finally:
            worker.stop()
            await worker.wait_stopped()
        return errors

    errors = trio.run(main)
    assert sorted(errors) == list(range(5))
    assert applied == []


def test_rows_of_a_group_not_open_here_do_not_make_every_turn_trim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows a trim cannot delete (a group's that is not open: it replays them when it opens)
    stay, and the next trim waits for TRIM_ROWS new rows, not one more."""
    monkeypatch.setattr("trio_broker._storage._shared_log.TRIM_ROWS", 12)
    vfs = PowerLossVFS("shared-orphans")
    broker = Broker(tmp_path, 3, vfs, random.Random(9))
    try:
        broker.start()
        log = broker.log
        assert log is not None
        with log.transaction:
            for _ in range(40):
                log.write("not-open-here", None, [], {"raft_term": 1})
        trims = []
        trim = log.trim
        monkeypatch.setattr(log, "trim", lambda: (trims.append(1), trim())[1])
        for _ in range(30):
            broker.step()
        assert log.group_rows()["not-open-here"] == 40
        assert 3 <= len(trims) <= 12, len(trims)  # about 90 new rows / 12, never each turn
    finally:
        broker.close()
        vfs.unregister()


def test_a_save_whose_own_transaction_fails_leaves_no_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's own transaction fails after the turn's shared commit: its row is deleted (its
    driver saves the Ready again, or restarts from the file, which lacks it), the other groups'
    saves of the turn stand, and after a power cut the failed entries are nowhere."""
    vfs = PowerLossVFS("shared-abandon")
    broker = Broker(tmp_path, 3, vfs, random.Random(10))
    try:
        broker.start()
        for _ in range(3):
            broker.step()
        assert broker.log is not None
        failing = broker.groups[1]
        rows = broker.log.group_rows()
        real = Store._set_meta

        def broken(store: Store, items: dict[str, Any]) -> None:
            if store is failing.store and "shared_seq" in items:
                # (a failure that lost no write: a failed fsync ends the job at once instead,
                # tests/test_failed_fsync.py)
                error = apsw.IOError("the group's file failed")
                error.extendedresult = apsw.SQLITE_IOERR_LOCK
                raise error
            real(store, items)

        monkeypatch.setattr(Store, "_set_meta", broken)
        numbers = broker._appends(broker.groups)
        saves = [g.propose([broker._append(n) for n in ns]) for g, ns in numbers]
        failing_last = failing.last
        outcomes = broker.committer._commit([_Job(s, False, None, 1) for s in saves])
        monkeypatch.setattr(Store, "_set_meta", real)
        assert [type(o).__name__ for o in outcomes] == ["Value", "Error", "Value"]
        after = broker.log.group_rows()
        inc = failing.store._incarnation
        assert after.get(inc, 0) == rows.get(inc, 0)  # (its row written, then deleted)
        for g in (broker.groups[0], broker.groups[2]):
            assert after[g.store._incarnation] == rows[g.store._incarnation] + 1
        vfs.cut()
        broker.close()
        vfs.power_on()
        log = SharedLog(tmp_path / SHARED_LOG_FILE, vfs=vfs.name)
        store = Store(tmp_path / "G1", vfs=vfs.name, shared=log)
        try:
            assert failing_last not in {e.index for e in store.raft_state().entries}
        finally:
            store.close()
            log.close()
    finally:
        broker.close()
        vfs.unregister()
