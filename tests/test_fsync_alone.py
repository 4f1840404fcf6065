"""Where a leader's durable transaction runs when its entries hold every request in flight
(docs/performance.md, "100 connections: the fsync on the loop, and the GIL's switch
interval"): on the loop's thread, as a replica's of the same size, for nothing else waits
for the loop meanwhile; with another entry's requests still waiting, on the storage thread
(the loop answers them meanwhile)."""

from __future__ import annotations

from tests.test_driver import _appends, _driver_on, _SlowStore, _three
from trio_broker._runtime._save_place import SENDING_COMMANDS


async def test_a_leaders_ready_that_holds_every_request_in_flight_runs_on_the_loop(tmp_path):
    _, leader, _follower = _three()
    driver, worker, _ = _driver_on(leader, tmp_path, _SlowStore())
    group = await driver.propose_many(_appends(SENDING_COMMANDS + 1))
    assert not isinstance(group, Exception)
    driver._flush_proposals()
    await driver._handle_ready(leader.ready())
    assert worker.where == ["here"]


async def test_with_an_earlier_entrys_requests_waiting_it_keeps_the_storage_thread(tmp_path):
    _, leader, _follower = _three()
    driver, worker, _ = _driver_on(leader, tmp_path, _SlowStore())
    for _ in range(2):  # (the first entry is not acknowledged: its requests still wait)
        group = await driver.propose_many(_appends(SENDING_COMMANDS + 1))
        assert not isinstance(group, Exception)
        driver._flush_proposals()
        await driver._handle_ready(leader.ready())
    assert worker.where == ["here", "thread"]
    assert driver.pending == 2 * (SENDING_COMMANDS + 1)
