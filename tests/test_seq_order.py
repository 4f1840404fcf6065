"""The order of a sequential append's steps on each broker (docs/performance-history.md, "One
sequential append's timeline"): what another broker or the client waits for leaves first,
the bookkeeping after, and never before what it promises is durable. Orders of calls, never
timings."""

from __future__ import annotations

from typing import Any

from trio_broker._core._raft_messages import ReplicateResponse
from trio_broker.testing import open_local_cluster

APPENDS = 30


async def _appending(tmp_path, watch, enough: Any = None) -> None:
    """Five appends (the links connected), ``watch(cluster, leader)``, then APPENDS more, one
    at a time on one connection, each answered success; with ``enough``, more until it says
    so (at most 10 x APPENDS: which path a step takes depends on the machine's load)."""
    from tests.wire import RawConnection, create_queue

    async with open_local_cluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        queue_id = await create_queue(leader.port)
        connection = await RawConnection.open(leader.port)
        append = {"operation": "APPEND", "queue_name": queue_id, "data": "x" * 100}
        for _ in range(5):
            assert (await connection.call(append)).get("status") == "success"
        watch(c, leader)
        for n in range(10 * APPENDS):
            if n >= APPENDS and (enough is None or enough()):
                break
            assert (await connection.call(append)).get("status") == "success"
        await connection.aclose()


def _watch_replica(driver: Any, events: list[tuple[str, int]]) -> None:
    """Record, on one replica: each transaction that returned (the last entry it wrote), each
    acknowledgement handed to the links (its match index), each transaction's bookkeeping."""
    store = driver._store
    save, send_at_once, saved = store.save, driver._send_at_once, driver._saved
    # Entries handed to storage before the watch (a save may still be running on the storage
    # thread, unseen by the wrapper below): their acknowledgements are not checked.
    events.append(("handed before", driver.node.log.unstable_from - 1))

    def recording_save(**kwargs: Any) -> Any:
        results = save(**kwargs)
        entries = kwargs.get("entries") or ()
        if entries:
            events.append(("durable", entries[-1].index))
        return results

    def recording_send(messages: Any) -> bool:
        for m in messages:
            if type(m) is ReplicateResponse and m.success:
                events.append(("ack", m.match_index))
        return send_at_once(messages)

    def recording_saved(rd: Any, committed: Any, **kwargs: Any) -> None:
        if rd.entries:
            events.append(("counted", rd.entries[-1].index))
        saved(rd, committed, **kwargs)

    store.save = recording_save
    driver._send_at_once = recording_send
    driver._saved = recording_saved


def _check_replica_order(events: dict[str, list[tuple[str, int]]]) -> None:
    """Each acknowledgement follows the transaction that made its entries durable (persist
    before you send: Raft's rule, unchanged), and the acknowledgement of a transaction's
    entries precedes that transaction's counts, histogram and repair notes (before: after
    them, on the path the leader's commit waits on). An acknowledgement of entries counted
    earlier (a heartbeat's answer, a REPLICATE sent again) has no transaction of its own."""
    checked = 0
    for seen in events.values():
        durable = 0
        for kind, index in seen:
            if kind in ("durable", "handed before"):
                durable = max(durable, index)
            elif kind == "ack":
                assert index <= durable, seen  # (never before its fsync)
        for d, (kind, index) in enumerate(seen):
            if kind != "durable":
                continue
            ack = next((n for n in range(d + 1, len(seen)) if seen[n] == ("ack", index)), None)
            if ack is not None:
                assert ("counted", index) not in seen[d + 1 : ack], seen
                checked += 1
    assert checked >= APPENDS, events


def _watch_replicas(events: dict[str, list[tuple[str, int]]]) -> Any:
    def watch(cluster: Any, leader: Any) -> None:
        for broker in cluster.brokers.values():
            if broker is not leader:
                _watch_replica(broker.driver, events.setdefault(broker.broker_id, []))

    return watch


async def test_a_replica_acknowledges_before_its_bookkeeping_and_after_its_fsync(tmp_path):
    """In the task that read the REPLICATE (``InStep``), each replica's usual path."""
    events: dict[str, list[tuple[str, int]]] = {}
    await _appending(tmp_path, _watch_replicas(events))
    _check_replica_order(events)


async def test_the_same_order_on_the_drivers_path(tmp_path, monkeypatch):
    """Every Ready handed to the driver's task (as a long one, or one after a slow fsync, is):
    the same order there."""
    from trio_broker._runtime import _in_step

    monkeypatch.setattr(_in_step, "runs_in_place", lambda *args, **kwargs: False)
    events: dict[str, list[tuple[str, int]]] = {}
    await _appending(tmp_path, _watch_replicas(events))
    _check_replica_order(events)


def test_damage_a_save_read_past_is_noted_even_if_the_acknowledgement_fails(monkeypatch):
    """The store's list of damaged values a transaction read past (reads applied for nobody)
    is replaced by its next transaction: the in-step persist takes it before the send, so a
    send that raises (a bug, a nursery closing under shutdown) does not lose it."""
    import types

    from trio_broker._runtime import _in_step
    from trio_broker._runtime._disk_space import DiskState

    monkeypatch.setattr(_in_step, "saving_durably", lambda rd, term_vote: True)
    monkeypatch.setattr(_in_step, "runs_in_place", lambda *args, **kwargs: True)
    monkeypatch.setattr(_in_step, "apply_weight", lambda committed: 0)
    noted: list[tuple[str, int]] = []
    rd = types.SimpleNamespace(
        committed_entries=(), entries=("e",), persisted_messages=("ack",), messages=(),
        snapshots_to_send=(), hard_state=None,
    )  # fmt: skip

    class Store:
        unchecked_met: list[tuple[str, int]] = []

        def save(self, **kwargs: Any) -> list[Any]:
            self.unchecked_met = [("Q-DAMAGED", 7)]
            return []

    class Driver:
        broker_id = "B-1"
        _parked, _taken, _failed, _unsent, _deferred = True, None, None, False, False
        _saved_term_vote, _fsync_fast = (1, None), True
        persisted_in_step = applied_ahead = ahead_in_step = 0
        _may_persist = _in_step.InStep._may_persist
        _set_reads = _in_step.InStep._set_reads
        _handing_over = _in_step.InStep._handing_over
        _fail_run = _in_step.InStep._fail_run
        _store_free = _in_step.InStep._store_free
        _saved_here = _in_step.InStep._saved_here

        def __init__(self) -> None:
            config = types.SimpleNamespace(voters={"B-1", "B-2"}, learners=set())
            self.node = types.SimpleNamespace(
                is_leader=False, config=config, has_ready=lambda: True, ready=lambda: rd,
                advance=lambda: None,
            )  # fmt: skip
            self._worker = types.SimpleNamespace(idle=True, save_in_turn=None)
            self.disk = types.SimpleNamespace(state=DiskState.OK)
            self.reads = types.SimpleNamespace(waiting=False)
            self._ledger = types.SimpleNamespace(queued=False, waiting=lambda index: False)
            self._store = Store()
            self.repair = types.SimpleNamespace(take_unchecked_met=self._take)

        def _take(self) -> None:
            noted.extend(self._store.unchecked_met)
            self._store.unchecked_met = []

        def _send_at_once(self, messages: Any) -> bool:
            raise RuntimeError("the send path failed")

        def _saved(self, *args: Any, **kwargs: Any) -> None:
            pass

        def wake(self) -> None:
            pass

    driver = Driver()
    _in_step.InStep._persist_after_frames(driver, True)  # type: ignore[arg-type]
    assert isinstance(driver._failed, RuntimeError)  # (the driver restarts, as before)
    assert noted == [("Q-DAMAGED", 7)]


async def test_the_leaders_apply_in_a_step_answers_before_its_bookkeeping(tmp_path):
    """The acknowledgement that commits an append applies it in its step (``_apply_here``):
    the answers are settled before the transaction's counts (before: after them)."""
    order: list[str] = []

    def watch(cluster: Any, leader: Any) -> None:
        driver = leader.driver
        apply_here, settle, saved = driver._apply_here, driver._settle_applied, driver._saved
        inside = [False]

        def recording_apply_here() -> None:
            inside[0] = True
            try:
                apply_here()
            finally:
                inside[0] = False

        def recording_settle(tokens: Any, outcomes: Any) -> None:
            if inside[0] and tokens:
                order.append("answered")
            settle(tokens, outcomes)

        def recording_saved(rd: Any, committed: Any, **kwargs: Any) -> None:
            if inside[0] and committed:
                order.append("counted")
            saved(rd, committed, **kwargs)

        driver._apply_here = recording_apply_here
        driver._settle_applied = recording_settle
        driver._saved = recording_saved

    await _appending(tmp_path, watch, enough=lambda: order.count("answered") >= APPENDS / 2)
    assert order.count("answered") >= APPENDS / 2, order
    pairs = list(zip(order[::2], order[1::2], strict=False))
    assert pairs and all(pair == ("answered", "counted") for pair in pairs), order
