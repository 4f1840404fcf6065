"""A leader's hand-off on shutdown, as its logs tell it (docs/operations.md, "Logs"): failed
because the peers it needed are gone (every broker stopping at once), it was expected and is
said at INFO with those peers named; failed while they are up, it is a WARNING."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from trio_broker._runtime._leadership import SHUTDOWN_WITHOUT_PEERS, Leadership, peers_gone
from trio_broker._runtime._peer_mux import PeerFleetStatistics, PeerLinkStatistics
from trio_broker.testing import open_mock_cluster

HAND_OFF_EVENTS = ("broker.step_down_failed", "leadership.transfer_aborted")


def hand_off_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) in HAND_OFF_EVENTS]


async def test_a_leader_whose_peers_are_gone_says_its_failed_hand_off_at_info(
    autojump_clock, caplog
):
    caplog.set_level(logging.INFO, logger="trio_broker")
    async with open_mock_cluster(3) as cluster:
        leader = await cluster.wait_for_voters(3)
        name = cluster.name_of(leader)
        others = sorted(n for n in cluster.brokers if n != name)
        gone = sorted(cluster.brokers[n].broker_id for n in others)
        for other in others:
            await cluster.crash(other)
        assert leader.node.is_leader  # (its failure timeout has not passed: it still leads)
        caplog.clear()
        await cluster.stop(name, graceful=True)
    records = hand_off_records(caplog)
    assert [r.event for r in records].count("broker.step_down_failed") == 1, records
    for record in records:
        assert record.levelno == logging.INFO, record.getMessage()
        assert record.fields["peers_gone"] == gone
        assert record.fields["expected"] == SHUTDOWN_WITHOUT_PEERS


async def test_a_leader_whose_peers_are_up_warns_of_a_failed_hand_off(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trio_broker")
    async with open_mock_cluster(3) as cluster:
        leader = await cluster.wait_for_voters(3)
        name = cluster.name_of(leader)
        target = cluster.name_of(leader.node.best_transfer_target())
        # Its TIMEOUT_NOW held back on a link that stays up: the target never takes over, and
        # the third broker, still hearing from the leader, votes for no one else.
        cluster.block(name, target)
        caplog.clear()
        await cluster.stop(name, graceful=True)
        cluster.heal()
    records = hand_off_records(caplog)
    assert [r.event for r in records].count("broker.step_down_failed") == 1, records
    for record in records:
        assert record.levelno == logging.WARNING, record.getMessage()
        assert "peers_gone" not in record.fields


def _host(voters: set[str], connected: set[str], *, links: bool = True) -> SimpleNamespace:
    stats = PeerFleetStatistics(
        tuple(PeerLinkStatistics(p, p in connected, 0) for p in sorted(voters - {"A"}))
    )
    return SimpleNamespace(
        broker_id="A",
        node=SimpleNamespace(config=SimpleNamespace(voters=voters)),
        peers=SimpleNamespace(statistics=lambda: stats) if links else None,
    )


@pytest.mark.parametrize(
    ("voters", "connected", "target", "gone"),
    [
        ("ABC", "", "B", ["B", "C"]),  # every broker stopping at once
        ("ABC", "C", "B", ["B"]),  # the target gone
        ("ABC", "B", "B", []),  # the target up, with this broker a majority: it could win
        ("ABCDE", "B", "B", ["C", "D", "E"]),  # the target up, no majority left to elect it
        ("ABCDE", "BC", "B", []),
        ("ABC", "", None, ["B", "C"]),
    ],
)
def test_the_peers_a_hand_off_needed_are_gone_when_its_target_or_a_majority_is(
    voters, connected, target, gone
):
    assert peers_gone(_host(set(voters), set(connected)), target) == gone


def test_without_links_to_look_at_no_peer_is_said_gone():
    assert peers_gone(_host({"A", "B", "C"}, set(), links=False), "B") == []


def test_a_transfer_aborted_outside_a_shutdown_is_a_warning_whatever_the_peers(caplog):
    """The operator's or the balancer's transfer: a WARNING even with its target gone; the same
    abort while shutting down is expected (INFO)."""
    caplog.set_level(logging.INFO, logger="trio_broker")
    levels = []
    for shutting_down in (False, True):
        host = _host({"A", "B", "C"}, set())
        vars(host.node).update(term=3, is_leader=True, leader_id="A", transfer_target="B")
        host.signal_changed = lambda: None
        leadership = Leadership(host)
        leadership.shutting_down = shutting_down
        leadership._note_transfer()  # started
        host.node.transfer_target = None  # abandoned after an election timeout: still leads
        caplog.clear()
        leadership._note_transfer()
        (record,) = hand_off_records(caplog)
        levels.append(record.levelno)
        assert leadership.transfers["aborted"] == 1
    assert levels == [logging.WARNING, logging.INFO]
