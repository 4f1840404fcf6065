"""The committer's path per save (``TurnCommitter.save``, ``_storage/_shared_log.py``): a batch
is never left halfway by a cancellation, without a shielded cancel scope
(docs/performance-history.md, "Several groups: the committer's path (ninth round)")."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_broker._storage._shared_log import SHARED_LOG_FILE, SharedLog, TurnCommitter
from trio_broker._storage._worker import StorageWorker


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.lowlevel.checkpoint()


async def _cancelled_leader(tmp_path: Path, *, short: bool, others: int) -> dict[str, Any]:
    """A batch on the storage thread held (a save that waits for a gate), a save queued
    behind it that will lead the next batch and ``others`` saves queued after it; the leader's
    scope cancelled while it waits; then the gate opened. What each save ran and got."""
    worker = StorageWorker(name="committer-path-storage")
    log = await worker.run(SharedLog, tmp_path / SHARED_LOG_FILE)
    committer = TurnCommitter(worker, log)
    gate = threading.Event()
    ran: list[tuple[str, str | None]] = []
    got: dict[str, Any] = {"ran": ran, "committer": committer}

    def job(name: str) -> Any:
        def save(*, stage: str | None = None) -> list[str]:
            if name == "held":
                gate.wait()
            ran.append((name, stage))
            return [name]

        return save

    async def save(name: str) -> None:  # (the held one on the thread, never on the loop)
        got[name] = await committer.save(job(name), short=short and name != "held")

    scope = trio.CancelScope()

    async def leader() -> None:
        with scope:
            got["leader"] = await committer.save(job("leader"), short=short)
            got["returned"] = True
            await trio.lowlevel.checkpoint()  # (the cancellation, delivered here)
            got["after"] = True

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(save, "held")
            await _until(lambda: committer._leading and not committer._waiting)
            nursery.start_soon(leader)
            await _until(lambda: len(committer._waiting) == 1)
            for i in range(others):
                nursery.start_soon(save, f"other{i}")
                await _until(lambda n=2 + i: len(committer._waiting) == n)  # type: ignore[misc]
            scope.cancel()  # (the leader waits, uncancellable, behind the held batch)
            gate.set()
    finally:
        gate.set()
        await worker.run(log.close)
        worker.stop()
        await worker.wait_stopped()
    got["cancelled_caught"] = scope.cancelled_caught
    return got


@pytest.mark.parametrize("short", [False, True], ids=["long", "short"])
async def test_a_cancelled_leader_runs_its_batch_of_several_groups(
    tmp_path: Path, short: bool
) -> None:
    """A save cancelled while it waits for the next batch, which it then leads (the turn's
    checkpoint, the hand-off to the storage thread), runs the batch all the same: every save
    of it runs its journal and apply stages and gets its own result, and the cancellation is
    delivered at the leader's next checkpoint. Left halfway, the other groups' saves would
    never run (their drivers waiting forever) or get no result."""
    got = await _cancelled_leader(tmp_path, short=short, others=2)
    assert got["leader"] == ["leader"] and got["other0"] == ["other0"]
    assert got["other1"] == ["other1"] and got["held"] == ["held"]
    assert got.get("returned") and "after" not in got and got["cancelled_caught"], got
    assert got["ran"][0] == ("held", "own")
    assert sorted(got["ran"][1:]) == sorted(
        (name, stage) for name in ("leader", "other0", "other1") for stage in ("journal", "apply")
    )
    committer = got["committer"]
    assert committer.batches == 2 and committer.saves == 4 and committer.idle


@pytest.mark.parametrize("short", [False, True], ids=["on the thread", "in place"])
async def test_a_cancelled_lone_save_runs_and_answers(tmp_path: Path, short: bool) -> None:
    """A save cancelled while it waits, then alone in its batch (``own``: a short one run on
    the event loop, the storage thread idle by then; a long one on the thread), runs and
    returns its result; the committer is idle after it."""
    got = await _cancelled_leader(tmp_path, short=short, others=0)
    assert got["leader"] == ["leader"] and got["held"] == ["held"]
    assert got.get("returned") and "after" not in got and got["cancelled_caught"], got
    assert got["ran"] == [("held", "own"), ("leader", "own")]
    committer = got["committer"]
    assert committer.own == 2 and committer.idle
    assert committer._worker.ran_here == (1 if short else 0)


async def test_a_lone_save_run_in_place_that_fails_its_fsync_fails_the_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of one run on the event loop (the storage thread idle) whose save fails its
    fsync fails the worker before anything else is queued: the due trim handed to the thread
    after it is refused, never run (a trim whose sync succeeded after the failed one would
    forget the shared log's rows that were the only durable copy: docs/reliability.md, "A
    failed fsync stops the broker")."""
    import apsw

    from trio_broker._storage._failed import StorageFailed

    trims: list[str] = []
    monkeypatch.setattr(SharedLog, "trim_due", lambda self: True)
    monkeypatch.setattr(SharedLog, "maybe_trim", lambda self: trims.append("trim"))
    worker = StorageWorker(name="committer-path-storage")
    log = await worker.run(SharedLog, tmp_path / SHARED_LOG_FILE)
    committer = TurnCommitter(worker, log)

    def save(*, stage: str | None = None) -> list[str]:
        error = apsw.IOError("disk I/O error")
        error.extendedresult = apsw.SQLITE_IOERR_FSYNC
        raise error

    try:
        assert worker.idle
        with pytest.raises(apsw.IOError):
            await committer.save(save, short=True)
        assert committer.own == 1 and worker.ran_here == 1  # (in place, alone)
        assert worker.failed is not None and worker.failed.code == "SQLITE_IOERR_FSYNC"
        with pytest.raises(StorageFailed):  # (queued behind the trim: both refused)
            await worker.run(lambda: None)
        assert trims == []
    finally:
        worker.failed = None
        await worker.run(log.close)
        worker.stop()
        await worker.wait_stopped()
