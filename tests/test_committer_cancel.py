"""The committer's batch path (``TurnCommitter.save``) under a cancellation of every save at
once, held at each point it can wait: no save is left halfway, every one queued runs its
stages and gets its own result, the cancellation is delivered after it, and the committer is
idle again (docs/performance-history.md, "Several groups: the committer's path (ninth round)")."""

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


@pytest.mark.parametrize("short", [False, True], ids=["on the thread", "in place"])
async def test_every_save_cancelled_while_a_batch_is_held_runs_and_gets_its_result(
    tmp_path: Path, short: bool
) -> None:
    """A batch held on the storage thread (its leader waiting), three saves queued behind it
    (one to lead the next batch, two to join it), then one more cancelled before it queues;
    the whole nursery cancelled, then the batch let go. Each queued save runs (journal and
    apply, or alone) and returns its result to its own task, which then sees the
    cancellation; the one cancelled first runs nothing. A waiter that left on the
    cancellation would lose its result (its group's driver never told whether its save is
    durable) or be woken after it left."""
    worker = StorageWorker(name="committer-cancel-storage")
    log = await worker.run(SharedLog, tmp_path / SHARED_LOG_FILE)
    committer = TurnCommitter(worker, log)
    gate = threading.Event()
    ran: list[tuple[str, str | None]] = []
    got: dict[str, Any] = {}
    after: list[str] = []

    def job(name: str) -> Any:
        def save(*, stage: str | None = None) -> list[str]:
            if name == "held":
                gate.wait()
            ran.append((name, stage))
            return [name]

        return save

    async def save(name: str) -> None:
        got[name] = await committer.save(job(name), short=short and name != "held")
        after.append(name)
        await trio.lowlevel.checkpoint()  # (the cancellation, delivered here)
        after.append(f"{name} not cancelled")

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(save, "held")
            await _until(lambda: committer._leading and not committer._waiting)
            for n, name in enumerate(("leader", "other0", "other1")):
                nursery.start_soon(save, name)
                await _until(lambda n=n: len(committer._waiting) == n + 1)  # type: ignore[misc]
            nursery.cancel_scope.cancel()
            nursery.start_soon(save, "late")  # (cancelled before it queues: runs nothing)
            gate.set()
    finally:
        gate.set()
        await worker.run(log.close)
        worker.stop()
        await worker.wait_stopped()
    assert got == {name: [name] for name in ("held", "leader", "other0", "other1")}
    assert sorted(after) == ["held", "leader", "other0", "other1"]
    assert ran[0] == ("held", "own")
    assert sorted(ran[1:]) == sorted(
        (name, stage) for name in ("leader", "other0", "other1") for stage in ("journal", "apply")
    )
    assert committer.idle and committer.batches == 2 and committer.saves == 4
