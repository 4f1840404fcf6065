"""A peer link lost, as the logs tell it (docs/operations.md, "Logs"): while this broker runs
it is a WARNING (a peer down, operators need to know); once this broker is shutting down, as
when every broker of a cluster stops at once, it is expected and said at INFO, with why."""

from __future__ import annotations

import functools
import logging

import trio

from trio_broker._runtime._peer_mux import LOST_AT_SHUTDOWN
from trio_broker.testing import open_mock_cluster


def lost_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "peer.lost"]


async def test_links_lost_while_the_whole_cluster_stops_are_said_at_info(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trio_broker")
    async with open_mock_cluster(3) as cluster:
        await cluster.wait_for_voters(3)
        caplog.clear()
        async with trio.open_nursery() as nursery:
            for name in sorted(cluster.brokers):
                nursery.start_soon(functools.partial(cluster.stop, name, graceful=True))
    records = lost_records(caplog)
    assert records  # (the brokers stopped first closed the others' links)
    for record in records:
        assert record.levelno == logging.INFO, record.getMessage()
        assert record.fields["expected"] == LOST_AT_SHUTDOWN
        assert record.fields["reason"]


async def test_a_link_lost_while_the_broker_runs_is_a_warning(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trio_broker")
    async with open_mock_cluster(3) as cluster:
        await cluster.wait_for_voters(3)
        names = sorted(cluster.brokers)
        gone = cluster.brokers[names[0]].broker_id
        caplog.clear()
        await cluster.crash(names[0])

        def lost() -> list[logging.LogRecord]:
            return [r for r in lost_records(caplog) if r.fields["peer"] == gone]

        await cluster.wait_until(lambda: len(lost()) == 2)  # (one per broker still running)
        records = lost()
    for record in records:
        assert record.levelno == logging.WARNING, record.getMessage()
        assert "expected" not in record.fields
        assert record.fields["reason"]  # (what broke it: the operator's first clue)
