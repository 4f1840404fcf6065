"""The simulator's wire (``trio_broker/testing/sim/_wire.py``): brokers' messages travel as the
bytes the runtime writes and are read back as a broker reads them, with brokers of the
version before ``APPEND_RUNS`` among them. Encoding changes no schedule, and a codec that
breaks its promises is caught."""

from __future__ import annotations

import pytest

from trio_broker._protocol import _consensus, _entries
from trio_broker.testing.sim import _client_wire, _wire, run_seed, run_swarm
from trio_broker.testing.sim._run import Simulation

SEEDS = (SEED_UPGRADE, SEED_DOWNGRADE, SEED_CHURN) = (6, 37, 22)
"""Seeds whose wire carries what matters: two replication groups whose every broker starts
as the version before, restarts upgraded, then writes runs; brokers upgraded and back as the
version before; membership changes, snapshots (DATA_SYNC) and groups of appends in runs."""
SEED_STALE = 16
"""A seed where frames in runs, written for a broker's earlier start, never reach it: it
came back as the version before."""
SEED_CUT = 6
"""A seed whose links go down with frames in flight (partitions, crashes)."""


pytestmark = pytest.mark.wire


def _without_wire(stats: dict[str, int]) -> dict[str, int]:
    """The statistics but the wire's, and but the groups a replica applied as decoded columns
    (``replica_columns``): which entries are held in runs follows the links' forms with the
    wire, and without it whether every broker reads runs (``_wire._encode_entries``)."""
    return {k: v for k, v in stats.items() if not k.startswith("wire_") and k != "replica_columns"}


def test_encoding_changes_no_schedule():
    """The same seed with and without the wire (the links' connections kept: on with the
    wire) runs the same schedule (trace hash) and ends with the same statistics: every frame
    decodes to the message sent, on every path."""
    results = {}
    for seed in SEEDS:
        on = run_seed(seed, wire=True)
        off = Simulation(seed, wire=False, links=True).run()
        assert on.ok and off.ok, (on.error, off.error)
        assert on.trace_hash == off.trace_hash, seed
        assert _without_wire(on.stats) == _without_wire(off.stats), seed
        assert on.stats["wire_frames"] > 500 and off.stats["wire_frames"] == 0
        results[seed] = on
    upgrade = results[SEED_UPGRADE]
    assert upgrade.params.replication_groups > 1 and upgrade.params.old_brokers
    assert upgrade.stats["wire_upgrades"] > 0 and upgrade.stats["wire_runs_frames"] > 0
    downgrade = results[SEED_DOWNGRADE].stats
    assert downgrade["wire_downgrades"] > 0 and downgrade["wire_upgrades"] > 0
    churn = results[SEED_CHURN].stats
    assert churn["config_changes"] > 0 and churn["snapshots_installed"] > 0
    assert churn["wire_runs_frames"] > 0


def test_frames_for_a_broker_back_as_the_version_before_never_reach_it():
    """Frames written for a broker that came back as the version before (for its earlier
    start) are dropped, as TCP drops a dead connection's bytes."""
    r = run_seed(SEED_STALE, wire=True)
    assert r.ok, r.error
    assert r.stats["wire_downgrades"] > 0 and r.stats["link_lost"] > 0


def test_a_link_down_loses_its_frames_and_a_network_that_delivers_them_is_caught(monkeypatch):
    """A link that goes down (cut, flapping, its receiver restarted) loses the frames it had
    not delivered, and takes none while down; a network that delivers them after the link
    came back (as the simulator did before its links were connections) is caught by the
    receiver's check, at the first such frame."""
    r = run_seed(SEED_CUT, wire=True)
    assert r.ok, r.error
    assert r.stats["link_lost"] > 0 and r.stats["link_unconnected"] > 0
    without = run_seed(SEED_CUT, wire=False)  # (the abstract network: nothing of it)
    assert without.stats["link_lost"] == without.stats["link_unconnected"] == 0
    monkeypatch.setattr(_wire.WireMixin, "_lost", lambda self, src, dst, start, at: False)
    failed = run_seed(SEED_CUT, wire=True)
    assert not failed.ok and "a dead connection's frames never arrive" in failed.error


def _first_failure(seeds, **kw):
    for r in run_swarm(seeds, jobs=1, stop_on_failure=True, wire=True, **kw):
        if not r.ok:
            return r
    return None


def test_runs_written_for_a_broker_of_the_version_before_are_caught(monkeypatch):
    """A codec that writes every group of appends in runs, whatever the leader's rule and the
    link's form say: a broker of the version before is sent one (seed 3, at step 3644: the
    first of seeds 0-59 that catch it, with 12 and 15; seed 4 at step 469 before the
    links were connections and the rolling upgrades)."""
    real = _entries.encode_payload
    monkeypatch.setattr(_entries, "encode_payload", lambda payload, runs=False: real(payload, True))
    failed = _first_failure([3])
    assert failed is not None and "of the version before" in failed.error, failed
    assert "--wire on" in failed.replay_command()


def test_a_frame_that_decodes_to_another_message_is_caught(monkeypatch):
    """A decoder that reads a run's stamp one off: every broker still decodes every frame,
    but what it applies is not what the leader proposed."""

    def runs_from_obj(obj):
        for run in obj["runs"]:
            run[1] += 1
        return real_runs(obj)

    real_runs = _entries._runs_from_obj
    monkeypatch.setattr(_entries, "_runs_from_obj", runs_from_obj)
    failed = _first_failure([SEED_CHURN])
    assert failed is not None and "changed on the wire" in failed.error, failed


def test_client_requests_and_answers_travel_as_frames():
    """With the wire, every client request is written as a client writes it and read as a
    broker's connection reads it, and must reach the broker as the command sent; every
    answer is written as the runtime writes it and read back by the client."""
    calls = []
    real = _client_wire.command_of
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_client_wire, "command_of", lambda frame: calls.append(frame) or real(frame))
        r = run_seed(SEED_CUT, wire=True)
    assert r.ok, r.error
    assert len(calls) > 20
    assert any(frame[4:].startswith(b'{"operation":"APPEND","queue_name":') for frame in calls)


def test_a_client_request_decoded_wrong_is_caught(monkeypatch):
    """A connection reader that cuts the last byte of an APPEND's value (its stored bytes
    sliced one short): the broker's command is not the client's."""
    real = _client_wire.decode_client_request

    def cut(payload):
        request = real(payload)
        if type(request) is tuple:
            return (request[0], request[1][:-1], request[2])
        return request

    monkeypatch.setattr(_client_wire, "decode_client_request", cut)
    failed = run_seed(SEED_CUT, wire=True)
    assert not failed.ok and "reached the broker as" in failed.error, failed.error


def test_an_answer_encoded_wrong_is_caught(monkeypatch):
    """An APPEND's answer frame one sequence number off: the client reads another answer
    than the result."""
    real = _client_wire.appended_frame
    monkeypatch.setattr(_client_wire, "appended_frame", lambda n: real(n + 1))
    failed = run_seed(SEED_CUT, wire=True)
    assert not failed.ok and "read as" in failed.error, failed.error


SEED_ROLLBACK = 4
"""A seed of a rolling upgrade rolled back (``_wire``'s ``_roll_back``): entries held in runs
are written to a broker back as the version before as ``COMMAND_GROUP``s."""


def test_a_rolled_back_broker_is_written_runs_as_command_groups():
    """The operator's rolling upgrade, then a follower back as the version before when its
    leader first writes runs: the link rewrites what the leader holds in runs."""
    r = run_seed(SEED_ROLLBACK, wire=True)
    assert r.ok, r.error
    assert r.stats["wire_rolling_restarts"] > 0 and r.stats["wire_rollbacks"] > 0
    assert r.stats["wire_runs_rewritten"] > 0


def test_a_link_that_does_not_rewrite_runs_for_the_version_before_is_caught(monkeypatch):
    """A link that writes every entry as the leader holds it, whatever its peer said
    (``entry_to_obj`` ignoring its ``runs``): the broker back as the version before is sent
    an ``APPEND_RUNS`` (seed 4, step 728; also 19 and 32 of seeds 0-99; none of 0-59 before
    the rolling upgrades and their rollbacks)."""
    real = _consensus.entry_to_obj
    monkeypatch.setattr(_consensus, "entry_to_obj", lambda entry, runs=False: real(entry, True))
    failed = _first_failure([SEED_ROLLBACK])
    assert failed is not None and "of the version before" in failed.error, failed
