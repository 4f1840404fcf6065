"""The status page names a replica's committed entries that wait to be applied: since the
apply lag (``_runtime._applied.APPLY_LAG``) a replica's applied index may stay up to
``APPLY_LAG - 1`` behind its commit while the leader writes lone appends, which an operator
would otherwise read as a stuck apply (docs/operations.md, "The status page")."""

from __future__ import annotations

from pathlib import Path

import trio

from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker._runtime._applied import APPLY_LAG
from trio_broker._runtime._status import RequestRates, _summary, read_status


def test_the_summary_shows_the_committed_entries_waiting() -> None:
    broker = {
        "broker_id": "B-AAAAA",
        "role": "follower",
        "cluster_id": "C-AAAAA",
        "term": 3,
        "leader_id": "B-BBBBB",
        "commit_index": 57,
        "applied_index": 54,
        "applies_waiting": 3,
        "connections": 2,
        "disk": "ok",
        "disk_free_mb": 100.0,
    }
    page = _summary({"broker": broker})
    assert 'data-field="applied_index">54</span> (<span data-field="applies_waiting">3<' in page
    assert f"applies lone appends {APPLY_LAG} at a time" in page


async def test_status_json_counts_the_committed_entries_not_applied(tmp_path: Path) -> None:
    """A lone leader applies what it commits in the same turn of its driver: once its first
    entries are in (a committed entry may wait for the driver's next step while the broker
    starts), none waits, and the field says so."""
    config = BrokerConfig(data_dir=tmp_path / "b1", port=0)
    async with open_broker(config) as broker:
        with trio.fail_after(10):
            while (stats := broker.statistics()).applied_index < max(1, stats.commit_index):
                await broker.driver.wait_changed()  # (the next Ready handled)
        status = await read_status(broker, RequestRates(broker))
        stats = broker.statistics()  # (read in the same step as the status's own)
        assert status["broker"]["applies_waiting"] == stats.commit_index - stats.applied_index
        assert status["broker"]["applies_waiting"] == 0
